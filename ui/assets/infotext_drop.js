// Dropping a PNG made by a Stable Diffusion UI onto a prompt box fills that tab's fields from
// the parameters stored in it (read here, in the browser; the tab's paste button does the rest).
() => {
    const latin1 = new TextDecoder("latin1");
    const inflate = async (data) => new Uint8Array(await new Response(
        new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate"))).arrayBuffer());

    // The "parameters" text chunk (tEXt, zTXt or iTXt) of a PNG file, or null.
    const pngParameters = async (file) => {
        const bytes = new Uint8Array(await file.arrayBuffer());
        const signature = [137, 80, 78, 71, 13, 10, 26, 10];
        if (!signature.every((value, i) => bytes[i] === value)) return null;
        const view = new DataView(bytes.buffer);
        for (let pos = 8; pos + 12 <= bytes.length;) {
            const length = view.getUint32(pos);
            const type = latin1.decode(bytes.slice(pos + 4, pos + 8));
            const data = bytes.slice(pos + 8, pos + 8 + length);
            pos += 12 + length;
            if (type === "IEND") break;
            if (!["tEXt", "zTXt", "iTXt"].includes(type)) continue;
            const end = data.indexOf(0);
            if (latin1.decode(data.slice(0, end)) !== "parameters") continue;
            if (type === "tEXt") return latin1.decode(data.slice(end + 1));
            if (type === "zTXt") return latin1.decode(await inflate(data.slice(end + 2)));
            // iTXt: keyword, compressed flag, method, language tag, translated keyword, text.
            const compressed = data[end + 1] === 1;
            let start = data.indexOf(0, end + 3) + 1;
            start = data.indexOf(0, start) + 1;
            const text = data.slice(start);
            return new TextDecoder("utf-8").decode(compressed ? await inflate(text) : text);
        }
        return null;
    };

    const promptField = (target) => {
        const field = target?.closest?.("[id$='_prompt']");
        const match = field && /^(.+?)_(?:neg_)?prompt$/.exec(field.id);
        return match ? match[1] : null;
    };

    document.addEventListener("dragover", (event) => {
        if (promptField(event.target) && event.dataTransfer?.types?.includes("Files")) {
            event.preventDefault();  // otherwise the browser would open the dropped file
        }
    });
    document.addEventListener("drop", async (event) => {
        const tab = promptField(event.target);
        const file = event.dataTransfer?.files?.[0];
        if (!tab || !file) return;
        event.preventDefault();
        const text = await pngParameters(file);
        const box = document.querySelector(`#${tab}_prompt textarea`);
        if (!text || !box) return;
        box.value = text;
        box.dispatchEvent(new Event("input", { bubbles: true }));
        // Let Gradio take in the new value before the paste button reads it.
        setTimeout(() => document.getElementById(`${tab}_paste`)?.click(), 100);
    });
}
