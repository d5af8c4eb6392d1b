// The "Theme" setting: light, dark, or as the system is set. Gradio 6 draws dark mode when the
// body has the `dark` class, so switching needs no restart. The Settings tab calls
// window.sdStudioTheme with the stored theme on each page load and after saving; the last one is
// remembered in the browser so the next page starts in it without a flash.
() => {
    const STORE = "sd-studio-theme";
    const media = window.matchMedia?.("(prefers-color-scheme: dark)");
    // ?__theme=light|dark in the address is Gradio's own per-visit override: leave it in charge.
    const forced = new URL(window.location.href).searchParams.has("__theme");
    let current = "system";

    const show = () => {
        const dark = current === "dark" || (current === "system" && !!media?.matches);
        document.body.classList.toggle("dark", dark);
    };
    window.sdStudioTheme = (theme) => {
        if (forced || !["light", "dark", "system"].includes(theme)) return;
        current = theme;
        try { localStorage.setItem(STORE, theme); } catch (error) { /* private mode: no memory */ }
        show();
    };
    // Gradio also follows the system's scheme; ours runs after it, so a chosen theme wins.
    media?.addEventListener("change", () => { if (!forced) show(); });
    let remembered = null;
    try { remembered = localStorage.getItem(STORE); } catch (error) { /* private mode */ }
    window.sdStudioTheme(window.sdStudioPendingTheme || remembered || "system");
}
