// A student's GPU session page (templates/me.html): the extend buttons. The server's
// name comes from a data-* attribute as a plain string, sent as JSON.
"use strict";

const page = document.body.dataset;

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action=extend]");
  if (!button) return;
  const message = document.getElementById("message");
  let response;
  try {
    response = await fetch(page.api + "me/extend", {
      method: "POST",
      body: JSON.stringify({ server: button.dataset.server }),
      headers: { "X-XSRFToken": page.xsrf, "Content-Type": "application/json" },
    });
  } catch (error) {
    message.textContent = `extend: ${error}`;
    message.hidden = false;
    return;
  }
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    message.textContent = `extend: ${answer.error || answer.message || response.status}`;
    message.hidden = false;
    return;
  }
  location.reload();
});
