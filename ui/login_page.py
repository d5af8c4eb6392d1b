"""The login page shown to a browser without a session when the UI has logins (--gradio-auth).

Ours rather than Gradio's: Gradio's form says nothing when a login is throttled (429), and a
person locked out for a while must be told how long. The form posts to Gradio's own /login
route (relative, so --subpath works), which sets the session cookie as before.
"""

from __future__ import annotations

import html

TITLE = "Log in to SD Studio"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SD Studio: log in</title>
<style>
  :root { color-scheme: light dark; font-family: system-ui, sans-serif; }
  body { display: flex; min-height: 100vh; margin: 0; align-items: center; justify-content: center;
         background: Canvas; color: CanvasText; }
  form { display: flex; flex-direction: column; gap: 0.6rem; width: min(22rem, 90vw); padding: 1.5rem;
         border: 1px solid color-mix(in srgb, CanvasText 20%, transparent); border-radius: 0.6rem; }
  h1 { font-size: 1.25rem; margin: 0 0 0.4rem; }
  input, button { font: inherit; padding: 0.5rem; border-radius: 0.35rem; }
  input { border: 1px solid color-mix(in srgb, CanvasText 35%, transparent); background: Field; color: FieldText; }
  button { border: 0; background: #ea580c; color: white; cursor: pointer; }
  button:disabled { opacity: 0.6; cursor: default; }
  #login_message { min-height: 1.3em; margin: 0; color: #dc2626; }
</style>
</head>
<body>
<form id="login_form">
  <h1>__TITLE__</h1>
  <label for="username">Username</label>
  <input id="username" name="username" autocomplete="username" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password">
  <p id="login_message" role="alert"></p>
  <button id="login_button" type="submit">Login</button>
</form>
<script>
(() => {
  const form = document.getElementById("login_form");
  const message = document.getElementById("login_message");
  const button = document.getElementById("login_button");
  let timer = null;
  function wait(seconds) {
    // Count down, and keep the button off until the wait is over.
    clearInterval(timer);
    let left = seconds;
    const tick = () => {
      if (left <= 0) { clearInterval(timer); button.disabled = false; message.textContent = ""; return; }
      message.textContent = `Too many attempts, wait ${left} s before trying again.`;
      left -= 1;
    };
    button.disabled = true;
    tick();
    timer = setInterval(tick, 1000);
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    let response;
    try {
      response = await fetch("login", { method: "POST", body: new FormData(form) });
    } catch (error) {
      message.textContent = "The server cannot be reached.";
      return;
    }
    if (response.ok) { location.reload(); return; }
    if (response.status === 429) {
      wait(parseInt(response.headers.get("Retry-After") || "1", 10));
    } else if (response.status === 400) {
      message.textContent = "Incorrect user name or password.";
      document.getElementById("password").value = "";
    } else {
      message.textContent = `Login failed (HTTP ${response.status}).`;
    }
  });
})();
</script>
</body>
</html>
"""


def login_page_html(title: str = TITLE) -> str:
    return _PAGE.replace("__TITLE__", html.escape(title))
