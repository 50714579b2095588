// The GPU admin page's actions (templates/gpus.html). Names and ids come from data-*
// attributes as plain strings: they are never parsed as code or markup.
"use strict";

const page = document.body.dataset;

function showError(text) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.hidden = false;
}

// A holder is USER or USER/SERVER: each part becomes one path segment.
function segments(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}

async function call(path, body) {
  let response;
  try {
    response = await fetch(page.api + path, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "X-XSRFToken": page.xsrf, "Content-Type": "application/json" },
    });
  } catch (error) {
    showError(`${path}: ${error}`);
    return;
  }
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    showError(`${path}: ${answer.message || response.status}`);
    return;
  }
  location.reload();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  if (button.dataset.action === "revoke") {
    call(`holders/${segments(button.dataset.holder)}/revoke`, {});
  } else if (button.dataset.action === "drain") {
    const drained = button.dataset.drained === "true";
    call(`devices/${encodeURIComponent(button.dataset.device)}/drain`, { drained });
  }
});

// "user:ada" or "group:nlp" reserves the device; an empty field clears the reservation.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form.reserve");
  if (!form) return;
  event.preventDefault();
  const who = form.elements.who.value.trim();
  const [kind, ...rest] = who.split(":");
  const name = rest.join(":");
  if (who && !((kind === "user" || kind === "group") && name)) {
    showError(`reserve: "${who}" is not user:NAME or group:NAME (leave it empty to clear)`);
    return;
  }
  call(`devices/${encodeURIComponent(form.dataset.device)}/reserve`, who ? { [kind]: name } : {});
});
