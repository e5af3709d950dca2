// The sign-in page: says why the last attempt failed (from ?error=REASON).
"use strict";
(function () {
  const reasons = {
    INVALID_API_KEY: "That key is not valid.",
    REVOKED_API_KEY: "That key was revoked.",
    MALFORMED_CREDENTIALS: "Paste the whole key.",
    MISSING_SCOPE: "That key cannot read reports: use a key with the read (or admin) scope.",
    NO_CREDENTIALS: "Type an API key.",
    SESSION_EXPIRED: "Your session ended: sign in again.",
    AUTH_UNAVAILABLE: "The server cannot check keys right now: try again.",
  };
  const query = new URLSearchParams(location.search);
  // The page that asked for the sign-in: the server goes back there (a local path only).
  const next = query.get("next");
  if (next) document.getElementById("next").value = next;
  const code = query.get("error");
  if (code) {
    const box = document.getElementById("signin-error");
    box.textContent = reasons[code] || "Sign-in failed (" + code + ").";
    box.hidden = false;
  }
})();
