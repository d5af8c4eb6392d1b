// The search box above the Settings tab: as the user types, only the settings whose label or
// key holds every typed word stay visible, and sections left empty are hidden. Done in the
// browser, so filtering costs no trip to the server.
() => {
    const PREFIX = "setting_";
    const labelOf = (block) => (block.querySelector("[data-testid='block-info']") || block).textContent;

    const filter = (query) => {
        const words = query.toLowerCase().split(/\s+/).filter(Boolean);
        let found = false;
        for (const section of document.querySelectorAll(".settings-section")) {
            let any = false;
            for (const block of section.querySelectorAll(`[id^='${PREFIX}']`)) {
                const text = `${labelOf(block)} ${block.id.slice(PREFIX.length)}`.toLowerCase();
                const match = words.every((word) => text.includes(word));
                block.classList.toggle("settings-filtered", !match);
                any ||= match;
            }
            section.classList.toggle("settings-filtered", !any);
            found ||= any;
        }
        // Nothing left to show: say so rather than leave a blank page.
        const none = document.getElementById("settings_no_match");
        if (none) {
            none.classList.toggle("settings-none-found", !found);
            const shown = none.querySelector(".settings-query");
            if (shown) shown.textContent = query.trim();
        }
    };

    document.addEventListener("input", (event) => {
        if (event.target.closest?.("#settings_search")) filter(event.target.value);
    });
}
