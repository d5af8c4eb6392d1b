// The extra network cards (ui/network_cards.py): search, sort, the folder filter, and a click on
// a card putting its text in the prompt at the cursor, or taking it out again. One set of
// listeners on the page serves every grid, however often Gradio renders it again.
() => {
    const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
    const escapeRegex = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const promptBox = (tab, negative) =>
        document.querySelector(`#${tab}_${negative ? "neg_prompt" : "prompt"} textarea`);
    const setValue = (box, value) => {
        box.value = value;
        box.dispatchEvent(new Event("input", { bubbles: true }));
    };

    const applyFilter = (pane) => {
        const query = pane.querySelector(".en-search").value.trim().toLowerCase();
        const folder = pane.querySelector(".en-folder").value;
        const hideOthers = pane.classList.contains("en-hide-incompatible");
        let shown = 0;
        const cards = pane.querySelectorAll(".en-card");
        for (const card of cards) {
            const here = card.dataset.folder;
            const fits = (!query || card.dataset.search.includes(query)) &&
                (!folder || here === folder || here.startsWith(folder + "/"));
            card.classList.toggle("en-filtered", !fits);
            if (fits && !(hideOthers && card.classList.contains("en-incompatible"))) shown += 1;
        }
        pane.querySelector(".en-count").textContent = `${shown} / ${cards.length}`;
    };

    const applySort = (pane) => {
        const key = pane.querySelector(".en-sort").value;
        const descending = pane.querySelector(".en-order").dataset.order === "desc";
        const grid = pane.querySelector(".en-grid");
        const cards = [...grid.children];
        const compare = key === "name"
            ? (a, b) => collator.compare(a.dataset.name, b.dataset.name)
            : (a, b) => Number(a.dataset[key === "date" ? "mtime" : "size"]) -
                Number(b.dataset[key === "date" ? "mtime" : "size"]) || collator.compare(a.dataset.name, b.dataset.name);
        cards.sort((a, b) => (descending ? -compare(a, b) : compare(a, b)));
        const ordered = document.createDocumentFragment();
        cards.forEach((card) => ordered.appendChild(card));
        grid.appendChild(ordered);
    };

    // Insert `text` at the box's cursor, with the separator where it would touch other words.
    const insertAtCursor = (box, text, separator) => {
        const value = box.value;
        const at = Math.min(box.selectionStart ?? value.length, value.length);
        const before = value.slice(0, at);
        const after = value.slice(at);
        const lead = before && !/[\s,]$/.test(before) ? separator : "";
        const trail = after && !/^[\s,]/.test(after) ? separator : "";
        const inserted = lead + text + trail;
        setValue(box, before + inserted + after);
        box.selectionStart = box.selectionEnd = before.length + inserted.length;
    };

    // Take the first match of `pattern` out of the text, with the spaces that led up to it.
    const removeFirst = (value, pattern) => {
        const found = new RegExp(`[ \\t]*(?:${pattern})`).exec(value);
        if (!found) return null;
        let rest = value.slice(0, found.index) + value.slice(found.index + found[0].length);
        if (found.index === 0) rest = rest.replace(/^[ \t]+/, "");
        return rest;
    };

    const wordPattern = (text) => `(?<![\\w-])${escapeRegex(text)}(?![\\w-])`;

    const toggleCard = (pane, card) => {
        const tab = pane.dataset.tab;
        const separator = pane.dataset.separator ?? " ";
        const data = card.dataset;
        if (pane.dataset.kind === "checkpoints") {
            const box = document.querySelector("#extra_networks_checkpoint textarea, #extra_networks_checkpoint input");
            if (!box) return;
            setValue(box, data.title);
            setTimeout(() => document.getElementById("extra_networks_checkpoint_go")?.click(), 100);
            return;
        }
        const prompt = promptBox(tab, false);
        if (!prompt) return;
        const patterns = data.match
            ? [data.match, data.match2].filter(Boolean).map((m) => `${escapeRegex(m)}[^>]*>`)
            : [wordPattern(data.prompt)];
        const present = patterns.find((pattern) => new RegExp(pattern).test(prompt.value));
        const negative = promptBox(tab, true);
        if (present) {
            let value = removeFirst(prompt.value, present);
            if (data.activation) value = removeFirst(value, escapeRegex(data.activation)) ?? value;
            setValue(prompt, value);
            if (negative && data.negative) {
                const rest = removeFirst(negative.value, escapeRegex(data.negative));
                if (rest !== null) setValue(negative, rest);
            }
            return;
        }
        insertAtCursor(prompt, data.activation ? `${data.prompt}${separator}${data.activation}` : data.prompt,
            separator);
        if (negative && data.negative && !negative.value.includes(data.negative)) {
            const value = negative.value;
            setValue(negative, value && !/[\s,]$/.test(value) ? value + separator + data.negative : value + data.negative);
        }
    };

    const openEditor = (pane, card) => {
        const tab = pane.dataset.tab;
        const box = document.querySelector(`#${tab}_en_target textarea, #${tab}_en_target input`);
        if (!box) return;
        setValue(box, `${pane.dataset.kind}\n${card.dataset.path}`);
        setTimeout(() => document.getElementById(`${tab}_en_open`)?.click(), 100);
    };

    // The loaded checkpoint changed: dim (or hide) the cards of networks for other families.
    window.sdStudioCardsFamily = (family) => {
        for (const pane of document.querySelectorAll(".en-pane.en-by-family")) {
            for (const card of pane.querySelectorAll(".en-card")) {
                const other = Boolean(family && card.dataset.family && card.dataset.family !== family);
                card.classList.toggle("en-incompatible", other);
            }
            applyFilter(pane);
        }
    };

    document.addEventListener("input", (event) => {
        const pane = event.target.closest?.(".en-pane");
        if (pane && event.target.classList.contains("en-search")) applyFilter(pane);
    });
    document.addEventListener("change", (event) => {
        const pane = event.target.closest?.(".en-pane");
        if (!pane) return;
        if (event.target.classList.contains("en-folder")) applyFilter(pane);
        if (event.target.classList.contains("en-sort")) applySort(pane);
    });
    // Enter or Space on a focused card does what a click does.
    document.addEventListener("keydown", (event) => {
        if ((event.key !== "Enter" && event.key !== " ") || event.ctrlKey || event.metaKey) return;
        const card = event.target.classList?.contains("en-card") ? event.target : null;
        const pane = card?.closest(".en-pane");
        if (!pane) return;
        event.preventDefault();
        toggleCard(pane, card);
    });
    // Keep the prompt's cursor where the user left it: a click on a card must not take the focus.
    document.addEventListener("mousedown", (event) => {
        if (event.target.closest?.(".en-card")) event.preventDefault();
    });
    document.addEventListener("click", (event) => {
        const pane = event.target.closest?.(".en-pane");
        if (!pane) return;
        const order = event.target.closest(".en-order");
        if (order) {
            const descending = order.dataset.order !== "desc";
            order.dataset.order = descending ? "desc" : "asc";
            order.innerHTML = descending ? "&#9660;" : "&#9650;";
            applySort(pane);
            return;
        }
        const card = event.target.closest(".en-card");
        if (!card) return;
        if (event.target.closest(".en-edit")) openEditor(pane, card);
        else toggleCard(pane, card);
    });
}
