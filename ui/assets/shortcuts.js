// Keyboard shortcuts users of the mature web UIs expect.
() => {
    document.addEventListener("keydown", (event) => {
        // Ctrl+Enter (Cmd+Enter on macOS) presses the Generate button of the visible tab.
        if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
        const buttons = [...document.querySelectorAll(".generate-button")];
        const visible = buttons.find((button) => button.offsetParent !== null);
        if (visible) {
            event.preventDefault();
            visible.click();
        }
    });
}
