// The image editors (img2img's Sketch and Inpaint tabs, the ControlNet units) draw an upload in
// the browser. Gradio's editor does not catch a file it cannot decode: the page throws an uncaught
// error and the editor stays empty without a word. So a file given to an editor is decoded here
// first: a picture goes on to the editor as it came; anything else goes no further, and the line
// under the editor names the field and the problem, as image fields say it from the server.
() => {
    const passed = new WeakSet();  // events re-sent after the check, to let through

    const editorOf = (target) => target?.closest?.(".checked-editor");
    const say = (editor, text) => {
        const note = document.querySelector(`#${editor.id}_upload_message .md`);
        if (note) note.textContent = text;
    };
    const label = (editor) => (editor.querySelector("[data-testid='block-label']")?.textContent || "Image").trim();
    const decodes = async (file) => {
        try {
            (await createImageBitmap(file)).close();
            return true;
        } catch {
            return false;
        }
    };
    // Resolves to whether the first file is a picture, saying so under the editor if not.
    const checked = async (editor, files) => {
        const file = files[0];
        if (!file || await decodes(file)) {
            say(editor, "");
            return true;
        }
        say(editor, file.size === 0 ? `${label(editor)} is empty (0 bytes): ${file.name}`
            : `${label(editor)} is not an image this app can read (PNG, JPEG, WEBP, ...): ${file.name}`);
        return false;
    };

    document.addEventListener("change", (event) => {
        const input = event.target;
        const editor = editorOf(input);
        if (!editor || input.type !== "file" || passed.has(event)) return;
        event.stopImmediatePropagation();  // the editor sees it once it is known to be a picture
        checked(editor, [...(input.files || [])]).then((ok) => {
            if (!ok) {
                input.value = "";
                return;
            }
            const again = new Event("change", { bubbles: true });
            passed.add(again);
            input.dispatchEvent(again);
        });
    }, true);

    document.addEventListener("drop", (event) => {
        const editor = editorOf(event.target);
        const files = [...(event.dataTransfer?.files || [])];  // readable only while the event runs
        if (!editor || !files.length || passed.has(event)) return;
        event.preventDefault();
        event.stopImmediatePropagation();
        const target = event.target;
        checked(editor, files).then((ok) => {
            if (!ok) return;
            const transfer = new DataTransfer();
            files.forEach((file) => transfer.items.add(file));
            const again = new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true });
            passed.add(again);
            target.dispatchEvent(again);
        });
    }, true);
}
