// MySecurePractice web app: plain JavaScript, no build step, hash routes (#/login, #/reset?token=...).
// Talks to the gateway's JSON API under /api/v1; state-changing calls carry the CSRF token.
// Everything from the server is inserted as text (never as HTML).
// The help page supports iOS 12.5.1 and later: Safari 12's language (tests/gateway/test_web_app_compat.py
// checks the syntax), and this polyfill for the one newer DOM method the app uses.
"use strict";

if (!Element.prototype.replaceChildren) {  // Safari < 14
  Element.prototype.replaceChildren = function (...nodes) {
    while (this.lastChild) this.removeChild(this.lastChild);
    this.append(...nodes);
  };
}

const state = { csrf: null, user: null, restriction: null };
const IDLE_MESSAGE = "You have been signed out after 30 minutes of inactivity. Please log in again.";
const MAX_UPLOAD_BYTES = 300 * 1024 * 1024;  // all attachments of one message together
const ACCEPTED_TYPES = ("ai aif aifc aiff avi bmp cpt dcm dex doc docx ds2 eml eps gif hqx jpe jpeg jpg log mid midi " +
  "mif mov movie mp2 mp3 mp4 mpe mpeg mpga obj oda pdf png ppt pptx ps qt ra ram rm rpm rtf rtx rv " +
  "smi smil stl text tif tiff txt vcard vcf wav wbxml wmlc wmv word xl xls xml xsl xlsx zip").split(" ");
const main = () => document.getElementById("main");

// ---- tiny DOM helper --------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// A labelled input; its hint is linked by aria-describedby (kept out of the accessible name).
function field(label, attrs, hint) {
  const id = attrs.id || "f-" + attrs.name;
  return h("div", { class: "field" }, h("label", { for: id }, label),
    h("input", { id, "aria-describedby": hint ? id + "-hint" : null, ...attrs }),
    hint ? h("span", { class: "hint", id: id + "-hint" }, hint) : null);
}

function page(title, ...children) {
  const box = main();
  box.replaceChildren(h("h1", {}, title), ...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  document.title = title + " · MySecurePractice";
  box.focus();
}

// A message for the next page: shown after the route changes, then cleared by the one after.
let pendingFlash = null;
function go(hash, message) {
  if (location.hash === hash) { pendingFlash = message || null; route(); return; }  // route() shows it
  pendingFlash = message || null;
  location.hash = hash;
}

let routeSeq = 0;
function pageFor(seq, ...args) {
  if (seq === routeSeq) page(...args);
}

function say(text) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.hidden = !text;
}

function errorBox() {
  return h("div", { class: "error", role: "alert", tabindex: "-1", hidden: true });
}

function showError(box, err) {
  box.textContent = err && err.message ? err.message : "Something went wrong. Please try again.";
  const fields = err && err.details && err.details.fields;
  if (fields) box.append(h("ul", {}, Object.values(fields).map((m) => h("li", {}, m))));
  const violations = err && err.details && err.details.violations;
  if (Array.isArray(violations)) box.append(h("ul", {}, violations.map((v) => h("li", {}, v.message || v))));
  box.hidden = false;  // role="alert": screen readers announce it
  box.focus();  // keyboard users land on it (it may be below the button they pressed)
}

// ---- API ------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || "Request failed.");
    this.status = status;
    this.code = body && body.error;
    this.details = (body && body.details) || {};
  }
}

async function api(method, path, body, { raw = false } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch("/api/v1" + path, init);
  if (raw) return resp;
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  return settle(method, path, resp.status, data);
}

// What every answer goes through, from fetch() or an upload's XMLHttpRequest: its data, or an
// ApiError; activity restarts the idle clock, an ended session goes back to the login page.
function settle(method, path, status, data) {
  const ok = status >= 200 && status < 300;
  if (ok && state.csrf && path !== "/session") watchIdle(null);  // activity: the idle clock restarts
  if (!ok) {
    const err = new ApiError(status, data);
    // A session that ended (idle for 30 minutes, signed out elsewhere): back to the login page.
    const signingIn = method === "POST" && path === "/session";
    if (status === 401 && !signingIn && (err.code === "session_expired" || state.csrf)) {
      signedOut(IDLE_MESSAGE);
    }
    throw err;
  }
  return data;
}

// A multipart POST with upload progress (fetch() reports none): the same headers and answers
// as api(); onProgress(sent, total) is called as the browser sends the body.
function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1" + path);
    xhr.setRequestHeader("Accept", "application/json");
    if (state.csrf) xhr.setRequestHeader("X-CSRF-Token", state.csrf);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); });
    xhr.addEventListener("load", () => {
      let data = null;
      try { data = xhr.status === 204 ? null : JSON.parse(xhr.responseText); } catch (_ignored) { /* not JSON: a generic error */ }
      try { resolve(settle("POST", path, xhr.status, data)); } catch (err) { reject(err); }
    });
    const failed = () => reject(new ApiError(0, { message: "The upload did not go through. Check your connection and try again." }));
    xhr.addEventListener("error", failed);
    xhr.addEventListener("timeout", failed);
    xhr.send(form);
  });
}

// The gateway ends a session after 30 idle minutes; check just after that moment so an idle
// screen goes back to the login page instead of failing on the next click. The check only
// looks (?activity=none: it does not count as activity, so idle tabs cannot keep the session
// alive) and the gateway says how many seconds are left, so the next check is timed from now
// and the browser's clock does not matter. secondsLeft: that number, or null after activity
// here (a full idle period).
let idleTimer = null;
function watchIdle(secondsLeft) {
  clearTimeout(idleTimer);
  if (!state.csrf) return;
  const wait = typeof secondsLeft === "number" ? Math.max(1, secondsLeft) * 1000 + 1000 : 30 * 60 * 1000 + 1000;
  idleTimer = setTimeout(checkIdle, Math.min(wait, 2147483000));
}

async function checkIdle() {
  let s;
  try {
    const resp = await fetch("/api/v1/session?activity=none", { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const data = await resp.json().catch(() => null);
    s = settle("GET", "/session", resp.status, data);  // 401: settle() goes to the login page with the reason
  } catch (_ignored) {
    watchIdle(60);  // offline or a passing error: look again in a minute (nothing once signed out)
    return;
  }
  watchIdle(s && typeof s.idle_seconds_left === "number" ? s.idle_seconds_left : 60);
}

function adopt(answer) {
  // Any answer that signs in (login, registration, reset, password change) carries these.
  if (answer && answer.csrf_token) state.csrf = answer.csrf_token;
  if (answer && answer.user) state.user = answer.user;
  if (answer && "restriction" in answer) state.restriction = answer.restriction;
  if (answer && answer.idle_expires_at) watchIdle(typeof answer.idle_seconds_left === "number" ? answer.idle_seconds_left : null);
  renderNav();
}

function signedOut(message) {
  state.csrf = null; state.user = null; state.restriction = null;
  clearTimeout(idleTimer);
  renderNav();
  if (location.hash.startsWith("#/login")) say(message || "");
  else go("#/login", message);
}

function afterSignIn(message) {
  if (state.restriction === "password_expired") go("#/change-password", message);
  else if (state.restriction === "verification_required") go("#/verify-phone", message);
  else {
    // Back to the page a link opened before signing in (such as an email confirmation).
    const next = sessionStorage.getItem("after_login");
    sessionStorage.removeItem("after_login");
    go(next && next.startsWith("#/") ? next : "#/inbox", message);
  }
}

// ---- password rules, shown live -------------------------------------------------------------------
const DEFAULT_RULES = { min_length: 8, requires_lower_upper_digit_special: true };

// The character classes as the server counts them (Python's str.islower/isupper/isdigit/isalnum):
// letters and digits of any script, so "Élan" has an upper case letter here as it has there.
// Built from strings: property escapes are newer than some parsers of this file.
const CHAR = (() => {
  try {
    return { lower: new RegExp("\\p{Ll}", "u"), upper: new RegExp("\\p{Lu}", "u"), digit: new RegExp("\\p{Nd}", "u"),
      alnum: new RegExp("^[\\p{L}\\p{N}]$", "u") };
  } catch (_ignored) {  // no property escapes in this browser: ASCII classes
    return { lower: /[a-z]/, upper: /[A-Z]/, digit: /[0-9]/, alnum: /^[A-Za-z0-9]$/ };
  }
})();

function passwordChecks(rules) {
  rules = rules || DEFAULT_RULES;
  const checks = [[`At least ${rules.min_length} characters`, (p) => Array.from(p).length >= rules.min_length]];
  if (rules.requires_lower_upper_digit_special) {
    checks.push(
      ["A lower case letter (a-z)", (p) => CHAR.lower.test(p)],
      ["An upper case letter (A-Z)", (p) => CHAR.upper.test(p)],
      ["A number (0-9)", (p) => CHAR.digit.test(p)],
      ["A special character, such as ! ? # %", (p) => Array.from(p).some((c) => !CHAR.alnum.test(c))],
    );
  }
  if (rules.no_email_name) checks.push(["Not your email name (the part before the @)", null]);
  if (rules.blocklist) checks.push(["Not a commonly used password (checked when you save)", null]);
  if (rules.history) {
    checks.push([rules.history_size ? `Not one of your last ${rules.history_size} passwords (checked when you save)`
      : "Not one of your recent passwords (checked when you save)", null]);
  }
  return checks;
}

function passwordFields(rules, label = "New password") {
  const input = h("input", { id: "f-password", name: "password", type: "password", autocomplete: "new-password", required: true, maxlength: (rules && rules.max_length) || 256, "aria-describedby": "pw-rules" });
  const confirm = h("input", { id: "f-confirm", name: "confirm", type: "password", autocomplete: "new-password", required: true });
  const checks = passwordChecks(rules);
  const items = checks.map(([text, test]) => h("li", { class: test ? "missing" : "info" }, text));
  const same = h("li", { class: "missing" }, "Both entries match");
  const list = h("ul", { class: "rules", id: "pw-rules", "aria-live": "polite" }, items, same);
  const update = () => {
    checks.forEach(([, test], i) => { if (test) items[i].className = test(input.value) ? "ok" : "missing"; });
    same.className = input.value && input.value === confirm.value ? "ok" : "missing";
  };
  input.addEventListener("input", update);
  confirm.addEventListener("input", update);
  const valid = () => checks.every(([, t]) => !t || t(input.value)) && input.value === confirm.value;
  return {
    nodes: [h("label", { for: "f-password" }, label, input), list, h("label", { for: "f-confirm" }, "Repeat the password", confirm)],
    value: () => input.value,
    valid,
  };
}

// ---- 2-step verification by text or call ---------------------------------------------------------
function twoStep(verification, onProof) {
  const err = errorBox();
  const sent = h("p", { class: "notice", "aria-live": "polite", hidden: true });
  let current = null;
  const codeInput = h("input", { id: "f-code", name: "code", inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}",
                                 maxlength: 6, required: true, "aria-describedby": "code-hint" });
  const verifyButton = h("button", { type: "submit" }, "Verify");
  const codeForm = h("form", { hidden: true, onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true; verifyButton.disabled = true;
    try {
      const answer = await api("POST", `/verifications/${encodeURIComponent(current.id)}/check`, { code: codeInput.value.trim() });
      await onProof(answer.proof);
    } catch (ex) { showError(err, ex); codeInput.focus(); } finally { verifyButton.disabled = false; }
  } },
    h("div", { class: "field" }, h("label", { for: "f-code" }, "6-digit code"), codeInput,
      h("span", { class: "hint", id: "code-hint" }, "The code expires after 10 minutes.")),
    h("div", { class: "row" }, verifyButton));
  const smsButton = h("button", { type: "button" }, "Text me a code");
  const callButton = h("button", { type: "button", class: "secondary" }, "Call me with a code");
  const send = (channel) => async () => {
    err.hidden = true; smsButton.disabled = callButton.disabled = true;
    try {
      current = await api("POST", "/verifications", { ticket: verification.ticket, channel });
      codeForm.hidden = false;
      sent.hidden = false;
      sent.textContent = channel === "call"
        ? `We are calling ${verification.phone_hint || "your phone"} to read you a code.`
        : `We have sent a text message with a code to ${verification.phone_hint || "your phone"}.`;
      smsButton.textContent = channel === "sms" ? "Send a new text" : "Text me instead";
      callButton.textContent = channel === "call" ? "Call me again" : "Call me instead";
      codeInput.value = "";
      codeInput.focus();
      // verify-service refuses a new code before resend_after: say when instead of failing.
      const wait = current.resend_after ? Date.parse(current.resend_after) - Date.now() : 0;
      if (wait > 0) {
        sent.append(" ", `You can ask for a new code in ${Math.ceil(wait / 1000)} seconds.`);
        setTimeout(() => { smsButton.disabled = callButton.disabled = false; }, wait);
        return;
      }
    } catch (ex) { showError(err, ex); err.focus(); }
    smsButton.disabled = callButton.disabled = false;
  };
  smsButton.addEventListener("click", send("sms"));
  callButton.addEventListener("click", send("call"));
  return h("section", { class: "two-step", "aria-labelledby": "two-step-h" },
    h("h2", { id: "two-step-h" }, "2-Step Verification"),
    h("p", {}, "We will send a 6-digit code to ", h("strong", {}, verification.phone_hint || "your phone"), ", by text message or by a phone call."),
    h("p", { class: "hint" }, "Be sure the phone number does not have a dial tree, or the call will not be able to get through to you."),
    h("div", { class: "row" }, smsButton, callButton),
    sent, codeForm,
    h("p", { class: "hint" }, "Didn't get a code? Ask for a new one, by text or by call; a new code replaces the previous one."),
    err);
}

// ---- views --------------------------------------------------------------------------------------------
function viewLogin() {
  const err = errorBox();
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true; say("");
    const fd = new FormData(form);
    try {
      adopt(await api("POST", "/session", { email: fd.get("email"), password: fd.get("password") }));
      afterSignIn();
    } catch (ex) {
      showError(err, ex);
      if (ex.code === "account_locked" || ex.code === "password_reset_required") err.append(" ", h("a", { href: "#/forgot" }, "Reset my password"));
      err.focus();
    }
  } },
    field("Email address", { name: "email", type: "email", autocomplete: "username", required: true }),
    field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true }),
    h("button", { type: "submit" }, "Log in"),
    h("a", { href: "#/forgot" }, "Forgot your password?"), err);
  page("Log in", h("div", { class: "card narrow" }, form));
}

function viewForgot() {
  const err = errorBox();
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    try {
      const answer = await api("POST", "/password/forgot", { email: new FormData(form).get("email") });
      form.replaceWith(h("p", { class: "notice" }, answer.message || "If an account uses this address, we have sent it a reset link."));
    } catch (ex) { showError(err, ex); }
  } },
    h("p", { class: "hint" }, "Passwords are never stored by PBHS and must be reset by you, using your account's email address."),
    field("Email address", { name: "email", type: "email", autocomplete: "username", required: true }),
    h("button", { type: "submit" }, "Email me a reset link"), err);
  page("Forgot password", h("div", { class: "card narrow" }, form));
}

async function viewReset(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const token = params.get("token") || "";
  const err = errorBox();
  pageFor(seq, "Reset your password", h("div", { class: "card narrow" }, h("p", {}, "Loading…"), err));
  let info;
  try { info = await api("POST", "/password/reset/verification", { token }); }
  catch (ex) { const box = errorBox(); showError(box, ex); pageFor(seq, "Reset your password", h("div", { class: "card narrow" }, box, h("a", { href: "#/forgot" }, "Ask for a new link"))); return; }
  let proof = null;
  const pw = passwordFields(info.password_rules);
  const form = h("form", { hidden: info.two_step, onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    if (!pw.valid()) { showError(err, { message: "Please choose a password that meets every rule." }); return; }
    try {
      adopt(await api("POST", "/password/reset", { token, password: pw.value(), proof }));
      afterSignIn("Your password has been changed.");
    } catch (ex) { showError(err, ex); }
  } }, ...pw.nodes, h("button", { type: "submit" }, "Save new password"));
  const parts = [];
  if (info.two_step) {
    const step = twoStep(info.verification, async (p) => {
      proof = p;
      step.replaceWith(h("p", { class: "notice" }, "✓ Your phone is verified. Now choose a new password."));
      form.hidden = false;
      form.querySelector("input").focus();
    });
    parts.push(step);
  }
  pageFor(seq, "Reset your password", h("div", { class: "card narrow" }, ...parts, form, err));
}

async function viewRegister(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const token = params.get("token") || "";
  let inv;
  try { inv = await api("GET", `/invitations/${encodeURIComponent(token)}`); }
  catch (ex) { const box = errorBox(); showError(box, ex); pageFor(seq, "Register", h("div", { class: "card narrow" }, box)); return; }
  const err = errorBox();
  const pw = passwordFields(inv.password_rules, "Password");
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const fd = new FormData(form);
    if (!pw.valid()) { showError(err, { message: "Please choose a password that meets every rule." }); return; }
    const body = { token, first_name: fd.get("first_name"), last_name: fd.get("last_name"), password: pw.value(),
                   terms_version: inv.terms_version, accept_terms: fd.get("accept_terms") === "on" };
    if (fd.get("phone")) body.phone = fd.get("phone");
    try {
      const answer = await api("POST", "/registrations", body);
      adopt(answer);
      // With 2-step, the session is restricted until the phone is proven (#/verify-phone).
      afterSignIn(answer.verification ? "Your account is created. Now confirm your phone number." : "Welcome! Your account is ready.");
    } catch (ex) { showError(err, ex); }
  } },
    h("p", {}, "You were invited to MySecurePractice", inv.practice_name ? ` by ${inv.practice_name}` : "", " as ", h("strong", {}, inv.email), "."),
    field("First name", { name: "first_name", autocomplete: "given-name", required: true, value: inv.first_name || "" }),
    field("Last name", { name: "last_name", autocomplete: "family-name", required: true, value: inv.last_name || "" }),
    // A number the inviter entered is the one to prove (the server refuses another): it is shown, not asked.
    !inv.two_step_required ? null : inv.phone_hint
      ? h("p", { class: "hint", id: "phone-on-file" }, `Your 2-Step Verification code will go to the number ${inv.practice_name || "your practice"} has on file for you (${inv.phone_hint}). `,
          "If that number is wrong, ask them to correct it, then follow this link again.")
      : field("Phone for 2-Step Verification", { name: "phone", type: "tel", autocomplete: "tel", required: true },
          "Use a number without a dial tree: an automated menu stops the call from reaching you."),
    ...pw.nodes,
    termsView(inv.terms_version),
    h("label", { class: "check", for: "f-terms" }, h("input", { id: "f-terms", name: "accept_terms", type: "checkbox", required: true }),
      `I have read and accept the Terms of Use (version ${inv.terms_version}).`),
    h("button", { type: "submit" }, "Create my account"), err);
  pageFor(seq, "Register", h("div", { class: "card narrow" }, form));
}

// The Terms of Use to accept, shown in place when opened (the text is fetched the first time).
function termsView(version) {
  const text = h("div", { class: "terms", tabindex: "0", role: "region", "aria-label": `Terms of Use, version ${version}` }, "Loading…");
  const view = h("details", { class: "terms-view" }, h("summary", {}, `Read the Terms of Use (version ${version})`), text);
  let loaded = false;
  view.addEventListener("toggle", async () => {
    if (!view.open || loaded) return;
    loaded = true;
    try { text.textContent = (await api("GET", `/terms/${encodeURIComponent(version)}`)).text; }
    catch (ex) { loaded = false; const err = errorBox(); text.replaceChildren(err); showError(err, ex); }
  });
  return view;
}

function finishVerification(path) {
  return async (proof) => {
    adopt(await api("POST", path, { proof }));
    afterSignIn("Your phone number is verified.");
  };
}

async function viewConfirmEmail(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  try {
    const answer = await api("POST", "/me/email/confirm", { token: params.get("token") || "" });
    pageFor(seq, "Email address confirmed", h("div", { class: "card narrow" },
      h("p", { class: "notice" }, `Your account now uses ${answer.user.email}.`), h("a", { href: "#/profile" }, "Back to your profile")));
  } catch (ex) { showError(err, ex); pageFor(seq, "Confirm your email address", h("div", { class: "card narrow" }, err)); }
}

async function viewVerifyPhone() {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  try {
    const answer = await api("POST", "/me/verification/ticket", {});
    const steps = h("div", {}, twoStep(answer.verification, finishVerification("/me/verification")));
    // A number the user gave themselves may be corrected here; one their practice entered is
    // corrected by the practice (the server says so, in words).
    const otherErr = errorBox();
    const other = h("form", { onsubmit: async (e) => {
      e.preventDefault(); otherErr.hidden = true;
      try {
        const fd = new FormData(other);
        const again = await api("POST", "/me/verification/ticket", { phone: fd.get("phone"), current_password: fd.get("current_password") });
        other.elements.current_password.value = "";
        steps.replaceChildren(twoStep(again.verification, finishVerification("/me/verification")));
        say(`The code will go to ${again.verification.phone_hint}.`);
      } catch (ex) { showError(otherErr, ex); otherErr.focus(); }
    } }, field("Right phone number", { name: "phone", type: "tel", autocomplete: "tel", required: true, maxlength: 40 }),
      // Another number takes the password too: the signed-in session alone is not enough.
      field("Your password", { name: "current_password", type: "password", autocomplete: "current-password", required: true,
                               maxlength: 1024 }),
      h("button", { type: "submit", class: "secondary" }, "Use this number"), otherErr);
    pageFor(seq, "Verify your phone", h("div", { class: "card narrow" }, steps,
      h("details", {}, h("summary", {}, "Wrong number?"), other), err));
  } catch (ex) { showError(err, ex); pageFor(seq, "Verify your phone", h("div", { class: "card narrow" }, err)); }
}

async function viewChangePassword() {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  let rules = null;  // the rules that apply to this user (history size, 2-step length); defaults if unknown
  try { rules = (await api("GET", "/me")).password_rules || null; } catch (_ignored) { /* the form still works */ }
  const pw = passwordFields(rules);
  const current = h("input", { id: "f-current", name: "current_password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    if (!pw.valid()) { showError(err, { message: "Please choose a password that meets every rule." }); return; }
    try {
      adopt(await api("POST", "/me/password", { current_password: current.value, new_password: pw.value() }));
      afterSignIn("Your password has been changed. Other devices have been signed out.");
    } catch (ex) { showError(err, ex); }
  } },
    state.restriction === "password_expired" ? h("p", { class: "notice" }, "Your password has expired (passwords expire every 90 days). Please choose a new one to continue.") : null,
    h("label", { for: "f-current" }, "Current password", current), ...pw.nodes,
    h("button", { type: "submit" }, "Change password"), err);
  pageFor(seq, "Change password", h("div", { class: "card narrow" }, form));
}

async function viewProfile(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const tab = params.get("tab");
  const err = errorBox();
  let me;
  try { me = (await api("GET", "/me")).user; } catch (ex) { showError(err, ex); pageFor(seq, "Profile", err); return; }
  // A signed-in session alone may not turn 2-Step Verification off or change the email address or
  // phones (someone who found the computer signed in could take the account over): the server
  // asks for the current password with those changes, so the form asks for it when one is made.
  const currentPw = h("input", { id: "f-profile-current", name: "current_password", type: "password",
                                 autocomplete: "current-password", "aria-describedby": "f-profile-current-hint" });
  const currentBox = h("div", { class: "field", hidden: true },
    h("label", { for: "f-profile-current" }, "Current password"), currentPw,
    h("span", { class: "hint", id: "f-profile-current-hint" },
      "For your security, enter your current password to change your email address or phone numbers, or to turn 2-Step Verification off."));
  const value = (k) => ((form.elements[k] && form.elements[k].value) || "").trim();
  const guarded = () => value("email").toLowerCase() !== (me.email || "").toLowerCase()
    || (value("phone") !== "" && value("phone") !== (me.phone || ""))
    || value("cell_phone") !== (me.cell_phone || "")
    || (!!me.two_step_required && !form.elements.two_step_required.checked);
  const askPassword = () => {
    const need = guarded();
    currentBox.hidden = !need;
    currentPw.setAttribute("aria-required", need ? "true" : "false");
    if (!need) currentPw.value = "";
  };
  // The number on file, proven by a code (PATCH /me with it answers a ticket when it never was).
  const confirmPhone = async (button) => {
    button.disabled = true;
    try {
      const answer = await api("PATCH", "/me", { phone: me.phone });
      if (!answer.verification) { say("Your phone number is already confirmed."); return; }
      err.hidden = true;
      phoneBox.replaceChildren(twoStep(answer.verification, async (proof) => {
        me = (await api("POST", "/me/phone", { proof })).user || me;
        phoneBox.replaceChildren();
        say("Your phone number is confirmed. You can turn 2-Step Verification on now.");
      }));
      phoneBox.querySelector("button").focus();
    } catch (ex) { showError(err, ex); button.disabled = false; }
  };
  const form = h("form", { oninput: askPassword, onchange: askPassword, onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const fd = new FormData(form);
    const patch = {};
    for (const k of ["first_name", "last_name", "email", "phone", "cell_phone", "time_zone", "ada_number"]) {
      const v = (fd.get(k) || "").trim();
      if (v !== (me[k] || "")) patch[k] = v || null;
    }
    const specialties = (fd.get("specialties") || "").split(",").map((s) => s.trim()).filter(Boolean);
    if (specialties.join(",") !== (me.specialties || []).join(",")) patch.specialties = specialties;
    const twoStepOn = fd.get("two_step_required") === "on";
    if (twoStepOn !== !!me.two_step_required) patch.two_step_required = twoStepOn;
    if (!Object.keys(patch).length) { say("Nothing to save: no field was changed."); return; }
    if (guarded()) {
      if (!currentPw.value) {
        askPassword();
        showError(err, { message: "Enter your current password to save these changes." });
        currentPw.focus();
        return;
      }
      patch.current_password = currentPw.value;
    }
    try {
      const answer = await api("PATCH", "/me", patch);
      me = answer.user || me;
      state.user = { ...state.user, ...me };  // dates follow the new time zone
      const notes = ["Your profile has been saved."];
      if (answer.email_confirmation_sent) {
        notes.push("Open the link we sent to your new email address to start using it.");
        form.elements.email.value = me.email || "";  // the address in use until the new one is confirmed
        const hint = document.getElementById("f-email-hint");
        if (hint && me.pending_email) hint.textContent = `Waiting for confirmation of ${me.pending_email}.`;
      }
      if (answer.verification) {
        // A new phone number is used once the user proves it with a code.
        form.elements.phone.value = me.phone || "";  // the number in use until then
        phoneBox.replaceChildren(twoStep(answer.verification, async (proof) => {
          me = (await api("POST", "/me/phone", { proof })).user || me;
          form.elements.phone.value = me.phone || "";
          phoneBox.replaceChildren();
          askPassword();
          say("Your new phone number is verified and saved.");
        }));
        notes.push("Confirm your new phone number with the code we send you (below).");
        phoneBox.querySelector("button").focus();
      }
      form.elements.cell_phone.value = me.cell_phone || "";  // as saved (E.164)
      currentPw.value = "";
      askPassword();
      say(notes.join(" "));
    } catch (ex) {
      showError(err, ex);
      if (ex.code === "wrong_current_password") currentPw.value = "";
      if (ex.code === "phone_not_verified" && me.phone) {
        const button = h("button", { type: "button", class: "secondary" }, "Send me a code to confirm my phone number");
        button.addEventListener("click", () => confirmPhone(button));
        err.append(h("div", { class: "row" }, button));
      }
      if (ex.code === "password_needs_two_step") err.append(" ", h("a", { href: "#/change-password" }, "Change password"));
      err.focus();
    }
  } },
    field("First name", { name: "first_name", value: me.first_name || "", autocomplete: "given-name" }),
    field("Last name", { name: "last_name", value: me.last_name || "", autocomplete: "family-name" }),
    field("Email address", { name: "email", type: "email", value: me.email || "", autocomplete: "email" },
      me.pending_email ? `Waiting for confirmation of ${me.pending_email}.` : "A new address is used once you confirm it from your inbox."),
    field("Phone", { name: "phone", type: "tel", value: me.phone || "" }, "Used for 2-Step Verification; it must not have a dial tree."),
    field("Cell phone", { name: "cell_phone", type: "tel", value: me.cell_phone || "" }),
    field("Time zone", { name: "time_zone", value: me.time_zone || "", placeholder: "America/New_York", list: "zones", autocomplete: "off" },
      "Start typing a city, such as New York or Chicago."),
    h("datalist", { id: "zones" }, (Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : []).map((z) => h("option", { value: z }))),
    field("ADA number", { name: "ada_number", value: me.ada_number || "" }),
    field("Specialties", { name: "specialties", value: (me.specialties || []).join(", ") }, "Separate several with commas."),
    h("label", { class: "check", for: "f-2step" }, h("input", { id: "f-2step", name: "two_step_required", type: "checkbox", checked: !!me.two_step_required }),
      "Use 2-Step Verification when I set or reset my password"),
    currentBox,
    h("div", { class: "row" }, h("button", { type: "submit" }, "Save"), h("a", { href: "#/change-password" }, "Change password")),
    err);
  const phoneBox = h("div", {});
  const practice = me.practice ? h("p", { class: "hint" }, `Practice: ${me.practice.name || ""}. Practice details can only be changed by PBHS Support.`) : null;
  const expiry = me.password_expiry_warning_days ? h("p", { class: "notice" }, `Your password expires in ${me.password_expiry_warning_days} days.`) : null;
  const manager = (me.roles || []).includes("user_manager");
  // Two tabs, as the help page has them: the account itself, and "Messaging" (SecureMail),
  // where User Managers find "View Invoices".
  const onMessaging = tab === "messaging";
  const tabs = h("nav", { class: "subnav tabs", "aria-label": "Profile" },
    h("a", { href: "#/profile", "aria-current": onMessaging ? null : "page" }, "Account"),
    h("a", { href: "#/profile?tab=messaging", "aria-current": onMessaging ? "page" : null }, "Messaging"));
  const messaging = h("section", { class: "card", "aria-labelledby": "messaging-h" },
    h("h2", { id: "messaging-h" }, "Messaging"),
    h("p", {}, me.securemail_paid
      ? "Your account has paid SecureMail: you can start secure messages and reply to them."
      : "Your account does not have paid SecureMail yet: you can reply to secure messages sent to you. A User Manager of your practice can purchase SecureMail for you."),
    manager ? h("p", {}, "Your SecureMail payments, for your account and any others you pay for.") : null,
    manager ? h("a", { class: "button", href: "#/invoices" }, "View Invoices") : null);
  if (onMessaging) pageFor(seq, "Profile", tabs, messaging);
  else pageFor(seq, "Profile", tabs, expiry, h("div", { class: "card" }, practice, form, phoneBox));
}

function userStatus(u) {
  if (u.locked) return h("span", { class: "badge bad" }, "Locked");
  if (u.reset_required) return h("span", { class: "badge bad" }, "Must set a new password");
  if (u.status === "verified") return h("span", { class: "badge good" }, "Registered");
  if (u.status === "registered_unverified") return h("span", { class: "badge" }, "Registered, phone not verified");
  return h("span", { class: "badge" }, "Invited, not registered");
}

async function viewUsers() {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  let users;
  try { users = (await api("GET", "/practice/users")).users; } catch (ex) { showError(err, ex); pageFor(seq, "Manage Users", err); return; }
  // `undo`: puts the control back as it was when the server refuses (a checkbox the user ticked).
  const act = (fn, okText, undo) => async () => {
    err.hidden = true;
    try { await fn(); await viewUsers(); say(okText); } catch (ex) { if (undo) undo(); showError(err, ex); err.focus(); }
  };
  const rows = users.map((u) => {
    const name = `${u.first_name || ""} ${u.last_name || ""}`.trim() || "(not registered yet)";
    return h("tr", {},
      cell("User", h("strong", {}, name), h("br"), h("span", { class: "hint" }, u.email),
        u.securemail_paid ? h("span", { class: "badge good" }, "SecureMail") : null),
      cell("Status", userStatus(u)),
      cell("2-Step", h("label", { class: "check" },
        h("input", { type: "checkbox", checked: !!u.two_step_required,
                     "aria-label": `2-Step Verification for ${u.email}`,
                     onchange: (e) => act(() => api("PATCH", `/practice/users/${u.id}`, { two_step_required: e.target.checked }),
                       "2-Step Verification setting saved.", () => { e.target.checked = !e.target.checked; })() }),
        "Required")),
      cell("Actions", h("div", { class: "row" },
        u.status === "invited" ? h("button", { type: "button", class: "secondary", onclick: act(() => api("POST", `/practice/users/${u.id}/reinvite`, {}), `Invitation sent again to ${u.email}.`) }, "Re-invite") : null,
        u.locked && u.own_practice ? h("button", { type: "button", class: "secondary", onclick: act(() => api("POST", `/practice/users/${u.id}/unlock`, {}), `${u.email} is unlocked.`) }, "Unlock") : null,
        h("button", { type: "button", class: "secondary", onclick: () => go(`#/users/edit?id=${encodeURIComponent(u.id)}`) }, "Edit"))));
  });
  pageFor(seq, "Manage Users",
    h("p", { class: "hint" }, "Users invited to your practice, registered or not. New users are invited by PBHS Support."),
    h("div", { class: "table-wrap" }, h("table", { class: "stack" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "User"), h("th", { scope: "col" }, "Registration"), h("th", { scope: "col" }, "2-Step Verification"), h("th", { scope: "col" }, "Actions"))),
      h("tbody", {}, rows))), err);
}

// Its own address (#/users/edit?id=...), so the menu's "Manage Users" and Back leave it.
async function viewEditUser(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  let users;
  try { users = (await api("GET", "/practice/users")).users; } catch (ex) { showError(err, ex); pageFor(seq, "Edit user", err); return; }
  const u = users.find((x) => x.id === params.get("id"));  // the list is what this manager may manage
  if (!u) { showError(err, { message: "No such user in your practice." }); pageFor(seq, "Edit user", err); return; }
  if (seq === routeSeq) editUser(u);
}

function editUser(u) {
  const err = errorBox();
  const invited = u.status === "invited";
  // The phone until one is proven (the user cannot change the number their code goes to).
  const phoneOpen = invited || u.status === "registered_unverified";
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const fd = new FormData(form);
    try {
      const saved = await api("PATCH", `/practice/users/${u.id}`, { email: fd.get("email"), phone: fd.get("phone") || null, cell_phone: fd.get("cell_phone") || null });
      go("#/users", saved.invitation_revoked
        ? `Saved. The link sent to the old address no longer works: re-invite the user to send a new one to ${saved.user.email}.`
        : invited ? "Saved. The user can follow their registration link again." : "Saved. The user's next code goes to the new number.");
    } catch (ex) { showError(err, ex); err.focus(); }
  } },
    field("Email address", { name: "email", type: "email", value: u.email, disabled: !invited }),
    field("Phone", { name: "phone", type: "tel", value: u.phone || "", disabled: !phoneOpen }, "For 2-Step Verification codes; the number must not have a dial tree."),
    field("Cell phone", { name: "cell_phone", type: "tel", value: u.cell_phone || "", disabled: !phoneOpen }),
    phoneOpen ? h("button", { type: "submit" }, "Save") : h("p", { class: "hint" }, "Registered users edit their own contact details."));
  const securemail = h("div", {});
  const offer = () => securemail.replaceChildren(
    h("button", { type: "button", class: "secondary", onclick: confirmStep }, "Purchase SecureMail for this User"));
  const confirmStep = () => {
    const yes = h("button", { type: "button", onclick: async () => {
      yes.disabled = true; err.hidden = true;
      try {
        await api("POST", "/billing/securemail", { user_id: u.id });
        u.securemail_paid = true;
        securemail.replaceChildren(h("p", { class: "notice" }, "SecureMail purchased: the user has paid SecureMail access now."));
        say("SecureMail purchased.");
      } catch (ex) { yes.disabled = false; showError(err, ex); err.focus(); }
    } }, "Confirm purchase");
    const box = h("div", { class: "confirm", role: "group", "aria-labelledby": "buy-h", tabindex: "-1" },
      h("p", { id: "buy-h" }, h("strong", {}, `Purchase SecureMail for ${u.email}?`)),
      h("p", {}, "This starts charging $10/month for this account to the credit card on file. To change the payment method, contact the PBHS Billing Dept. at 800-840-5383."),
      h("div", { class: "row" }, yes, h("button", { type: "button", class: "secondary", onclick: offer }, "Cancel")));
    securemail.replaceChildren(box);
    box.focus();
  };
  if (u.securemail_paid) securemail.replaceChildren(h("p", { class: "notice" }, "SecureMail is paid for this user."));
  else if (!u.own_practice) {  // someone the practice invited who belongs elsewhere (or nowhere)
    securemail.replaceChildren(h("p", { class: "hint" }, "SecureMail can be purchased only for your practice's own users."));
  } else if (u.status !== "verified") {  // billing knows a user once fully registered: nothing to charge before
    securemail.replaceChildren(h("p", { class: "hint" }, "SecureMail can be purchased for this user once they have registered fully."));
  } else offer();
  page(`Edit ${u.email}`, h("div", { class: "card narrow" }, form, h("h2", {}, "SecureMail"), securemail, err,
    h("p", {}, h("a", { href: "#/users" }, "Back to Manage Users"))));
}

// A table cell that, on a phone, shows its column's name before its content (see app.css).
function cell(label, ...children) {
  return h("td", { "data-label": label }, h("div", {}, ...children));
}

function fmtDate(iso) {
  if (!iso) return "";
  const zone = state.user && state.user.time_zone;  // the user's own time zone from the profile
  try { return new Date(iso).toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "numeric", minute: "2-digit", timeZone: zone || undefined, timeZoneName: "short" }); }
  catch (_ignored) { return new Date(iso).toLocaleString(); }
}
function fmtSize(n) {
  if (n >= 1024 * 1024) return (n / 1024 / 1024).toFixed(1) + " MB";
  if (n >= 1024) return Math.round(n / 1024) + " KB";
  return n + " bytes";
}
function senderName(m) {
  const f = m.from || {};
  return [f.name, f.practice_name].filter(Boolean).join(", ") || "Unknown sender";
}

async function viewFolder(folder) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  const title = folder === "sent" ? "Sent" : "Inbox";
  let list = [];
  try { list = (await api("GET", `/messages?folder=${folder}`)).messages || []; }
  catch (ex) { showError(err, ex); }
  const rows = list.map((m) => h("tr", { class: m.read === false ? "unread" : null },
    cell("Subject", h("a", { href: `#/message?id=${encodeURIComponent(m.id)}` }, m.subject || "(no subject)"),
      m.attachment_count ? h("span", { class: "hint" }, ` · ${m.attachment_count} attachment${m.attachment_count > 1 ? "s" : ""}`) : null),
    folder === "sent" ? null : cell("From", senderName(m)),
    cell("Date", fmtDate(m.created_at))));
  pageFor(seq, title,
    h("p", {}, h("a", { class: "button", href: "#/compose" }, "Compose a secure message")),
    list.length ? h("div", { class: "table-wrap" }, h("table", { class: "stack" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Subject"), folder === "sent" ? null : h("th", { scope: "col" }, "From"), h("th", { scope: "col" }, "Date"))),
      h("tbody", {}, rows)))
      : h("p", { class: "hint" }, folder === "sent" ? "You have not sent any messages yet." : "No messages."), err);
}

async function viewMessage(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  let msg;
  try { msg = await api("GET", `/messages/${encodeURIComponent(params.get("id") || "")}`); }
  catch (ex) { showError(err, ex); pageFor(seq, "Message", err); return; }
  const attachments = msg.attachments || [];
  const body = h("textarea", { id: "f-reply", name: "body", required: true });
  const replyErr = errorBox();
  const reply = h("form", { onsubmit: async (e) => {
    e.preventDefault(); replyErr.hidden = true;
    const button = reply.querySelector("button"); button.disabled = true;
    try {
      const sent = await api("POST", `/messages/${encodeURIComponent(msg.id)}/replies`, { body: body.value });
      go(`#/message?id=${encodeURIComponent(sent.id)}`, "Your reply has been sent.");
    } catch (ex) { showError(replyErr, ex); replyErr.focus(); } finally { button.disabled = false; }
  } }, h("label", { for: "f-reply" }, "Reply", body), h("div", { class: "row" }, h("button", { type: "submit" }, "Send reply")), replyErr);
  const expires = h("dd", { id: "msg-expires" }, fmtDate(msg.expires_at));
  pageFor(seq, msg.subject || "(no subject)",
    h("dl", { class: "meta" },
      h("dt", {}, "From"), h("dd", {}, senderName(msg)),
      h("dt", {}, "To"), h("dd", {}, (msg.to || []).map((r) => r.email).join(", ")),
      h("dt", {}, "Sent"), h("dd", {}, fmtDate(msg.created_at)),
      msg.expires_at ? [h("dt", {}, "Expires"), expires] : null),
    h("div", { class: "card body" }, msg.body || ""),
    attachments.length ? [h("h2", {}, "Attachments"), h("ul", { class: "files" }, attachments.map((a) => h("li", {},
      h("a", { href: `/api/v1/messages/${encodeURIComponent(msg.id)}/attachments/${encodeURIComponent(a.id)}`, download: a.filename },
        `Download ${a.filename}`), h("span", { class: "hint" }, ` (${fmtSize(a.size)})`))))] : null,
    msg.folder === "sent" ? senderTools(msg, expires) : null,
    (msg.thread || []).length > 1 ? [h("h2", {}, "Conversation"), h("ol", { class: "thread" }, msg.thread.map((t) => h("li", {},
      t.id === msg.id ? h("strong", { "aria-current": "page" }, t.subject) : h("a", { href: `#/message?id=${encodeURIComponent(t.id)}` }, t.subject),
      h("span", { class: "hint" }, ` · ${senderName(t)} · ${fmtDate(t.created_at)}`))))] : null,
    h("h2", {}, "Reply to everyone in this conversation"), h("div", { class: "card" }, reply),
    h("p", {}, h("a", { href: msg.folder === "sent" ? "#/sent" : "#/inbox" }, `Back to ${msg.folder === "sent" ? "Sent" : "Inbox"}`)));
}

// ---- a sent message: read receipts, recall, a shorter life, the access log -------------------------
function senderTools(msg, expires) {
  return h("section", { class: "card sender", "aria-labelledby": "receipts-h" },
    h("h2", { id: "receipts-h" }, "Read receipts"), receipts(msg),
    recallControl(msg), expiryControl(msg, expires), accessLog(msg));
}

function receipts(msg) {
  const rows = (msg.to || []).map((r) => h("tr", {},
    cell("Recipient", r.email),
    cell("First opened", r.first_opened_at ? fmtDate(r.first_opened_at) : h("span", { class: "badge" }, "Not opened yet"))));
  return h("div", { class: "table-wrap" }, h("table", { class: "stack", id: "receipts" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Recipient"), h("th", { scope: "col" }, "First opened"))),
    h("tbody", {}, rows)));
}

// A yes/cancel question shown in `box` (it takes focus); `restore` puts back what was there.
function askFirst(box, question, detail, yesText, onYes, restore) {
  const yes = h("button", { type: "button", onclick: async () => { yes.disabled = true; await onYes(); yes.disabled = false; } }, yesText);
  const id = "ask-" + Math.random().toString(36).slice(2);
  const dialog = h("div", { class: "confirm", role: "group", "aria-labelledby": id, tabindex: "-1" },
    h("p", { id }, h("strong", {}, question)), h("p", {}, detail),
    h("div", { class: "row" }, yes, h("button", { type: "button", class: "secondary", onclick: restore }, "Cancel")));
  box.replaceChildren(dialog);
  dialog.focus();
}

function recallControl(msg) {
  const err = errorBox();
  const box = h("div", {});
  const closed = () => box.replaceChildren(h("p", { class: "hint" }, "A recipient has opened this message, so it can no longer be recalled."));
  const offer = () => box.replaceChildren(
    h("p", { class: "hint" }, "Nobody has opened this message yet: you can still recall it."),
    h("button", { type: "button", class: "secondary", onclick: ask }, "Recall this message"));
  const ask = () => askFirst(box, "Recall this message?",
    "It is deleted with its attachments, for you and for every recipient. This cannot be undone.", "Yes, recall it", async () => {
      err.hidden = true;
      try {
        await api("POST", `/messages/${encodeURIComponent(msg.id)}/recall`, {});
        go("#/sent", "The message has been recalled: its recipients can no longer open it.");
      } catch (ex) {
        if (ex.code === "already_opened") closed(); else offer();
        showError(err, ex);
      }
    }, offer);
  if (msg.can_recall) offer(); else closed();
  return [h("h2", {}, "Recall"), box, err];
}

function expiryControl(msg, expires) {
  const err = errorBox();
  const box = h("div", {});
  const days = h("input", { id: "f-expiry", name: "expires_in_days", type: "number", min: 0, step: 1, required: true,
                            inputmode: "numeric", "aria-describedby": "expiry-hint" });
  const change = async (n) => {
    err.hidden = true;
    try {
      const answer = await api("PATCH", `/messages/${encodeURIComponent(msg.id)}`, { expires_in_days: n });
      if (answer.expired) { go("#/sent", "The message has expired: it is deleted for you and every recipient."); return; }
      msg.expires_at = answer.expires_at;
      expires.textContent = fmtDate(answer.expires_at);
      days.value = "";
      say(`The message now expires ${fmtDate(answer.expires_at)}.`);
    } catch (ex) { showError(err, ex); }
  };
  const form = h("form", { onsubmit: (e) => {
    e.preventDefault();
    const n = Number(days.value);
    if (n > 0) { change(n); return; }
    askFirst(box, "Expire this message now?", "It is deleted with its attachments, for you and for every recipient. This cannot be undone.",
      "Yes, expire it now", () => change(0).then(() => box.replaceChildren(form)), () => box.replaceChildren(form));
  } },
    h("div", { class: "field" }, h("label", { for: "f-expiry" }, "Expire in (days from now)"), days,
      h("span", { class: "hint", id: "expiry-hint" }, "A message's life can only be shortened, never extended. 0 expires it now.")),
    h("div", { class: "row" }, h("button", { type: "submit", class: "secondary" }, "Change expiry")));
  box.append(form);
  return [h("h2", {}, "Expiry"), box, err];
}

// Who opened the message or downloaded its files, and when (the disclosure log).
function accessLog(msg) {
  const err = errorBox();
  const box = h("div", {});
  const who = (id) => id === (msg.from || {}).user_id ? "You" : ((msg.to || []).find((r) => r.user_id === id) || {}).email || "Another user";
  const show = async () => {
    err.hidden = true;
    try {
      const entries = (await api("GET", `/messages/${encodeURIComponent(msg.id)}/disclosures`)).disclosures || [];
      box.replaceChildren(entries.length ? h("div", { class: "table-wrap" }, h("table", { class: "stack" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "When"), h("th", { scope: "col" }, "Who"), h("th", { scope: "col" }, "What"), h("th", { scope: "col" }, "From"))),
        h("tbody", {}, entries.map((e) => h("tr", {}, cell("When", fmtDate(e.at)), cell("Who", who(e.user_id)),
          cell("What", e.action === "download" ? "Downloaded a file" : "Opened the message"), cell("From", e.ip || "")))))) : h("p", { class: "hint" }, "Nobody has opened it yet."),
      h("p", {}, h("a", { href: `/api/v1/messages/${encodeURIComponent(msg.id)}/disclosures?format=csv`, download: "" }, "Download the access log (CSV)")));
    } catch (ex) { showError(err, ex); }
  };
  box.append(h("button", { type: "button", class: "secondary", onclick: show }, "Show the access log"));
  return [h("h2", {}, "Access log"), box, err];
}

function viewCompose() {
  const err = errorBox();
  const files = h("input", { id: "f-files", name: "files", type: "file", multiple: true, "aria-describedby": "files-hint",
                             accept: ACCEPTED_TYPES.map((e) => "." + e).join(",") });
  const chosen = h("p", { class: "hint", "aria-live": "polite", hidden: true });
  const tooBig = () => [...files.files].reduce((n, f) => n + f.size, 0) > MAX_UPLOAD_BYTES;
  const refused = () => [...files.files].filter((f) => !ACCEPTED_TYPES.includes((f.name.split(".").pop() || "").toLowerCase()));
  files.addEventListener("change", () => {
    const total = [...files.files].reduce((n, f) => n + f.size, 0);
    chosen.textContent = files.files.length ? `${files.files.length} file(s), ${fmtSize(total)} in total.` : "";
    chosen.hidden = !files.files.length;
  });
  // Upload progress, from the XMLHttpRequest's upload events (shown only with attachments).
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0 });
  const barText = h("span", { class: "hint" });
  const progress = h("div", { class: "field", hidden: true }, h("label", { for: "upload-progress" }, "Upload progress"), bar, barText);
  const showProgress = (sent, total) => {
    const pct = total ? Math.floor((sent * 100) / total) : 100;
    bar.value = pct;
    barText.textContent = pct < 100 ? `${pct}% sent · ${fmtSize(sent)} of ${fmtSize(total)}` : "Upload complete. Securing the files…";
  };
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const fd = new FormData(form);
    const to = (fd.get("to") || "").split(/[,;\s]+/).map((s) => s.trim()).filter(Boolean);
    if (tooBig()) { showError(err, { message: "Attachments may total at most 300 MB per message." }); err.focus(); return; }
    const bad = refused();
    if (bad.length) { showError(err, { message: `This file type is not accepted: ${bad.map((f) => f.name).join(", ")}.` }); err.focus(); return; }
    // Numbers for a recipient new to the portal (their invitation and registration code use them).
    const numbers = { phone: (fd.get("recipient_phone") || "").trim(), cell_phone: (fd.get("recipient_cell_phone") || "").trim() };
    const withNumbers = numbers.phone || numbers.cell_phone;
    if (withNumbers && to.length !== 1) {
      showError(err, { message: "Phone numbers can be given for one recipient at a time. For several, add them later in Manage Users (Edit)." });
      err.focus(); return;
    }
    // The mail service reads a JSON part named "message" first, then the files.
    const body = new FormData();
    body.append("message", JSON.stringify({ to, subject: fd.get("subject"), body: fd.get("body"),
                                            recipient_phones: withNumbers ? { [to[0]]: numbers } : {} }));
    for (const f of files.files) body.append("file", f, f.name);
    const button = form.querySelector("button[type=submit]"); button.disabled = true;
    const withFiles = files.files.length > 0;
    say(withFiles ? "Sending your message and its attachments…" : "");
    if (withFiles) { showProgress(0, 1); progress.hidden = false; }
    try {
      const sent = withFiles ? await upload("/messages", body, showProgress) : await api("POST", "/messages", body);
      go(`#/message?id=${encodeURIComponent(sent.id)}`, "Your secure message has been sent.");
    } catch (ex) { say(""); progress.hidden = true; showError(err, ex); err.focus(); } finally { button.disabled = false; }
  } },
    field("To", { name: "to", type: "text", required: true, autocomplete: "off", inputmode: "email" }, "Separate several addresses with commas. Someone without an account is invited to register to read it."),
    h("details", { class: "field" }, h("summary", {}, "A new recipient's phone numbers (optional)"),
      h("p", { class: "hint" }, "For someone without an account yet: their registration code goes to this phone, so they prove who they are. " +
        "It must not have a dial tree. Ignored for people who already have an account."),
      field("Recipient's phone", { name: "recipient_phone", type: "tel", maxlength: 40, autocomplete: "off" }),
      field("Recipient's cell phone", { name: "recipient_cell_phone", type: "tel", maxlength: 40, autocomplete: "off" })),
    field("Subject", { name: "subject", required: true, maxlength: 300 }),
    h("label", { for: "f-body" }, "Message", h("textarea", { id: "f-body", name: "body" })),
    h("div", { class: "field" }, h("label", { for: "f-files" }, "Attachments"), files,
      h("span", { class: "hint", id: "files-hint" }, "Up to 300 MB in total per message. Accepted types: " + ACCEPTED_TYPES.join(", ") + ".")),
    chosen,
    h("div", { class: "row" }, h("button", { type: "submit" }, "Send securely")), progress, err);
  page("Compose", h("div", { class: "card" }, form));
}

async function viewInvoices() {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const err = errorBox();
  let invoices = [], card = null;
  try { invoices = (await api("GET", "/billing/invoices")).invoices || []; } catch (ex) { showError(err, ex); }
  try { card = (await api("GET", "/billing/card")).card; } catch (ex) { if (ex.status !== 404) showError(err, ex); }
  const money = (cents, cur) => new Intl.NumberFormat(undefined, { style: "currency", currency: (cur || "usd").toUpperCase() }).format((cents || 0) / 100);
  const rows = invoices.map((i) => h("tr", {},
    cell("Invoice", i.number || i.id, i.own ? "" : h("span", { class: "hint" }, " (another user's account)")),
    cell("Period", i.period_start ? `${new Date(i.period_start).toLocaleDateString()} – ${new Date(i.period_end).toLocaleDateString()}` : ""),
    cell("Amount", money(i.amount_cents, i.currency)),
    cell("Status", h("span", { class: "badge" + (i.status === "paid" ? " good" : "") }, i.status))));
  const mailErr = errorBox();
  const mailButton = h("button", { type: "button", class: "secondary", onclick: async () => {
    mailButton.disabled = true; mailErr.hidden = true;
    try {
      const sent = await api("POST", "/billing/invoices/email", {});
      say(`${sent.invoices === 1 ? "Your invoice is" : `Your ${sent.invoices} invoices are`} on the way to your email address.`);
    } catch (ex) { showError(mailErr, ex); mailErr.focus(); }
    mailButton.disabled = false;
  } }, "Email my invoices");
  pageFor(seq, "SecureMail payments",
    h("p", {}, card ? `Card on file: ${card.brand || "card"} ending in ${card.last4}, expires ${card.exp_month}/${card.exp_year}.` : "No credit card on file."),
    h("p", { class: "hint" }, "To change the payment method, contact the PBHS Billing Dept. at 800-840-5383."),
    h("div", { class: "row" }, mailButton, h("span", { class: "hint" }, "The invoices for your own account only, sent to the email address you sign in with.")), mailErr,
    invoices.length ? h("div", { class: "table-wrap" }, h("table", { class: "stack" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Invoice"), h("th", { scope: "col" }, "Period"), h("th", { scope: "col" }, "Amount"), h("th", { scope: "col" }, "Status"))),
      h("tbody", {}, rows))) : h("p", { class: "hint" }, "No invoices yet."), err);
}

// ---- Support (PBHS staff): practices, their users, the audit trail --------------------------------------
// auth-service decides on every call (403 for anyone but Support): the pages show its answer.
// Suggestions for the action filter (the trail is not limited to them).
const AUDIT_ACTIONS = ("login logout session_expired account_locked account_unlocked password_change password_changed password_reset " +
  "password_reset_requested password_expiry_warning invitation_sent invited_user_edited registration phone_verified " +
  "verification_ticket_issued verification_code_sent verification_code_checked two_step_changed role_granted role_revoked " +
  "practice_opened practice_updated profile_change email_change_requested profile_email_changed profile_phone_changed securemail_granted " +
  "securemail_revoked support_account_seeded").split(" ");

// "?a=1&b=2" from the values that are set ("" when none is; an unticked box is not set).
function qs(values) {
  const q = new URLSearchParams(Object.entries(values).filter(([, v]) => v !== null && v !== undefined && v !== "" && v !== false));
  return q.toString() ? "?" + q : "";
}

// The named controls of a form or fieldset, trimmed (checkboxes as true/false).
function values(box) {
  return Object.fromEntries([...box.elements].filter((e) => e.name).map((e) => [e.name, e.type === "checkbox" ? e.checked : e.value.trim()]));
}

function supportNav() {
  const here = location.hash.split("?")[0];
  return h("nav", { class: "subnav", "aria-label": "Support" },
    [["#/support", "Practices"], ["#/support/new-practice", "Open a new practice"], ["#/support/users", "Find users"], ["#/support/audit", "Audit trail"]]
      .map(([href, text]) => h("a", { href, "aria-current": href === here ? "page" : null }, text)));
}

// A Support page whose data did not load: the API's reason, alone when it is a refusal (403).
function supportFailed(seq, title, ex, ...rest) {
  const err = errorBox();
  showError(err, ex);
  pageFor(seq, title, ex.status === 403 ? null : [supportNav(), ...rest], err);
}

// A search form whose values go into the page's address (so reload and Back keep them).
function filterForm(path, params, fields, button, ...extra) {
  const form = h("form", { class: "filters", role: "search", "aria-label": button, onsubmit: (e) => { e.preventDefault(); go(path + qs(values(form))); } },
    fields.map(([label, name, attrs, hint]) => field(label, { name, value: params.get(name) || "", ...attrs }, hint)),
    ...extra, h("div", { class: "row" }, h("button", { type: "submit" }, button)));
  return form;
}

function identifiersText(ids) {
  return Object.entries(ids || {}).map(([k, v]) => `${k.toUpperCase()} ${v}`).join(", ");
}

function practiceFields(p = {}) {
  const ids = p.identifiers || {};
  const others = identifiersText(Object.fromEntries(Object.entries(ids).filter(([k]) => k !== "ada" && k !== "npi")));
  return [field("Practice name", { name: "name", required: true, maxlength: 200, value: p.name || "", autocomplete: "off" }),
    h("div", { class: "field" }, h("label", { for: "f-address" }, "Address"), h("textarea", { id: "f-address", name: "address", class: "short", maxlength: 500 }, p.address || "")),
    field("Practice phone", { name: "phone", type: "tel", maxlength: 40, value: p.phone || "" }),
    field("ADA number", { name: "ada", value: ids.ada || "", autocomplete: "off" }),
    field("NPI", { name: "npi", value: ids.npi || "", autocomplete: "off" }, others ? `Other identifiers, kept as they are: ${others}.` : null)];
}

// The API's practice fields from the form; identifiers other than ADA and NPI are kept.
function practiceBody(v, p = {}) {
  const identifiers = { ...(p.identifiers || {}) };
  for (const k of ["ada", "npi"]) { if (v[k]) identifiers[k] = v[k]; else delete identifiers[k]; }
  return { name: v.name, address: v.address, phone: v.phone, identifiers };
}

function staffFields(prefix) {
  const f = (label, name, attrs, hint) => field(label, { id: `f-${prefix}-${name}`, name, ...attrs }, hint);
  return [f("Email address", "email", { type: "email", required: true, maxlength: 320, autocomplete: "off" }),
    f("First name", "first_name", { maxlength: 100, autocomplete: "off" }), f("Last name", "last_name", { maxlength: 100, autocomplete: "off" }),
    f("Phone", "phone", { type: "tel", maxlength: 40 }, "For 2-Step Verification codes; the number must not have a dial tree."),
    f("Cell phone", "cell_phone", { type: "tel", maxlength: 40 }),
    h("label", { class: "check", for: `f-${prefix}-2step` }, h("input", { id: `f-${prefix}-2step`, name: "two_step_required", type: "checkbox", checked: true }),
      "Require 2-Step Verification")];
}

function staffBody(v) {
  const body = { email: v.email, first_name: v.first_name, last_name: v.last_name, two_step_required: v.two_step_required };
  if (v.phone) body.phone = v.phone;
  if (v.cell_phone) body.cell_phone = v.cell_phone;
  return body;
}

async function viewPractices(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const search = () => filterForm("#/support", params, [["Practice name", "name", { type: "search", autocomplete: "off" },
    "Part of the name; leave empty to list the first 100 practices."]], "Search practices");
  let practices;
  try { practices = (await api("GET", "/admin/practices" + qs({ name: params.get("name") }))).practices; }
  catch (ex) { supportFailed(seq, "Practices", ex, search()); return; }
  const rows = practices.map((p) => h("tr", {},
    cell("Practice", h("a", { href: `#/support/practice?id=${encodeURIComponent(p.id)}` }, p.name)),
    cell("Address", p.address || ""), cell("Phone", p.phone || ""), cell("Identifiers", identifiersText(p.identifiers))));
  pageFor(seq, "Practices", supportNav(), search(),
    practices.length ? h("div", { class: "table-wrap" }, h("table", { class: "stack", id: "practices" },
      h("thead", {}, h("tr", {}, ["Practice", "Address", "Phone", "Identifiers"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))) : h("p", { class: "hint" }, "No practice matches."));
}

function viewNewPractice() {
  const err = errorBox();
  const details = h("fieldset", {}, h("legend", {}, "Practice"), practiceFields());
  const first = h("fieldset", {}, h("legend", {}, "First user, who becomes the practice's User Manager"), staffFields("first"));
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const button = form.querySelector("button[type=submit]"); button.disabled = true;
    try {
      const answer = await api("POST", "/admin/practices", { ...practiceBody(values(details)), first_user: staffBody(values(first)) });
      go(`#/support/practice?id=${encodeURIComponent(answer.practice.id)}`,
        `The practice is open. An invitation to register has been sent to ${answer.user.email}.`);
    } catch (ex) { showError(err, ex); } finally { button.disabled = false; }
  } }, details, first, h("div", { class: "row" }, h("button", { type: "submit" }, "Open the practice")), err);
  page("Open a new practice", supportNav(), h("div", { class: "card" }, form));
}

async function viewPractice(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const id = params.get("id") || "";
  const path = `/admin/practices/${encodeURIComponent(id)}`;
  let p, users;
  try { ({ practice: p, users } = await api("GET", path)); } catch (ex) { supportFailed(seq, "Practice", ex); return; }
  const err = errorBox();
  const form = h("form", { "aria-labelledby": "details-h", onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const body = practiceBody(values(form), p);
    const patch = Object.fromEntries(Object.entries(body).filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(p[k] !== undefined && p[k] !== null ? p[k] : (k === "identifiers" ? {} : ""))));
    if (!Object.keys(patch).length) { say("Nothing to save: no field was changed."); return; }
    try { await api("PATCH", path, patch); await viewPractice(params); say("The practice's details have been saved."); }
    catch (ex) { showError(err, ex); }
  } }, practiceFields(p), h("div", { class: "row" }, h("button", { type: "submit" }, "Save practice details")), err);
  const inviteErr = errorBox();
  const invite = h("form", { "aria-labelledby": "invite-h", onsubmit: async (e) => {
    e.preventDefault(); inviteErr.hidden = true;
    try {
      const { user } = await api("POST", path + "/users", staffBody(values(invite)));
      await viewPractice(params);
      say(`An invitation to register has been sent to ${user.email}.`);
    } catch (ex) { showError(inviteErr, ex); }
  } }, staffFields("staff"), h("div", { class: "row" }, h("button", { type: "submit" }, "Send the invitation")), inviteErr);
  pageFor(seq, p.name, supportNav(),
    h("p", { class: "row" }, h("a", { href: "#/support/audit" + qs({ practice_id: p.id }) }, "This practice's audit trail"),
      h("span", { class: "hint" }, `Practice id: ${p.id}`)),
    h("section", { class: "card gap" }, h("h2", { id: "details-h" }, "Practice details"), form),
    h("h2", {}, "Users"), users.length ? supportUsers(users, () => viewPractice(params), false) : h("p", { class: "hint" }, "No users yet."),
    h("section", { class: "card gap" }, h("h2", { id: "invite-h" }, "Invite a user to this practice"), invite));
}

// Users as Support sees them, with what Support can do for each: unlock, User Manager on/off,
// a new invitation. `refresh` shows the page again after a change.
function supportUsers(users, refresh, withPractice) {
  const err = errorBox();
  const rows = users.map((u) => {
    const box = h("div", { class: "row" });
    const manager = u.roles.includes("user_manager");
    const done = async (text) => { await refresh(); say(text); };
    const ask = (question, detail, yes, call, text) => () => askFirst(box, question, detail, yes, async () => {
      err.hidden = true;
      try { await done(text(await call())); } catch (ex) { restore(); showError(err, ex); }
    }, restore);
    const button = (text, onclick) => h("button", { type: "button", class: "secondary", "aria-label": `${text}: ${u.email}`, onclick }, text);
    const restore = () => box.replaceChildren(...[
      u.locked ? button("Unlock", ask(`Unlock ${u.email}?`,
        "The user will have to set a new password themselves, with \u201cForgot password\u201d, before they can log in again. Support never sees or sets a password.",
        "Yes, unlock", () => api("POST", `/admin/users/${encodeURIComponent(u.id)}/unlock`, {}),
        (a) => a.unlocked ? `${u.email} is unlocked. The user must set a new password themselves, with \u201cForgot password\u201d, before they can log in.`
          : `${u.email} was not locked.`)) : null,
      u.practice_id && !u.roles.includes("support") ? button(manager ? "Revoke User Manager" : "Grant User Manager", ask(
        manager ? `Revoke User Manager from ${u.email}?` : `Make ${u.email} a User Manager?`,
        (manager ? "They will no longer manage their practice's users." : "They will manage their practice's users.") + " They are signed out everywhere and sign in again.",
        manager ? "Yes, revoke" : "Yes, grant", () => api(manager ? "DELETE" : "PUT", `/admin/users/${encodeURIComponent(u.id)}/roles/user_manager`, {}),
        () => manager ? `${u.email} is no longer a User Manager.` : `${u.email} is now a User Manager of their practice.`)) : null,
      u.status === "invited" ? button("Re-invite", async () => {
        err.hidden = true;
        try { await api("POST", `/practice/users/${encodeURIComponent(u.id)}/reinvite`, {}); await done(`A new invitation has been sent to ${u.email}.`); }
        catch (ex) { showError(err, ex); }
      }) : null,
      h("a", { href: "#/support/audit" + qs({ subject_id: u.id }), "aria-label": `Audit trail: ${u.email}` }, "Audit trail")].filter(Boolean));
    restore();
    const name = `${u.first_name || ""} ${u.last_name || ""}`.trim() || "(not registered yet)";
    return h("tr", {},
      cell("User", h("strong", {}, name), h("br"), h("span", { class: "hint" }, u.email)),
      withPractice ? cell("Practice", u.practice_id ? h("a", { href: `#/support/practice?id=${encodeURIComponent(u.practice_id)}` }, "Open the practice") : "None") : null,
      cell("Status", userStatus(u), manager ? [" ", h("span", { class: "badge" }, "User Manager")] : null,
        u.roles.includes("support") ? [" ", h("span", { class: "badge" }, "Support")] : null),
      cell("Actions", box));
  });
  return [h("div", { class: "table-wrap" }, h("table", { class: "stack", id: "support-users" },
    h("thead", {}, h("tr", {}, ["User", withPractice ? "Practice" : null, "Status", "Actions"].filter(Boolean).map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows))), err];
}

async function viewSupportUsers(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const search = () => filterForm("#/support/users", params, [
    ["Email address contains", "email", { type: "search", autocomplete: "off" }],
    ["Name contains", "name", { type: "search", autocomplete: "off", maxlength: 200 }, "First, last or both, e.g. \u201cAnn O\u2019Neil\u201d."],
    ["Practice id", "practice_id", { autocomplete: "off" }, "Only this practice's users (its page shows the id)."],
    ["User id", "id", { autocomplete: "off" }, "As the audit trail shows it."],
    ["Users per page", "limit", { type: "number", min: 1, max: 200, inputmode: "numeric" }, "1 to 200; 100 when empty."]], "Find users",
  h("label", { class: "check", for: "f-locked" },
    h("input", { id: "f-locked", name: "locked", type: "checkbox", checked: params.get("locked") === "true" }), "Only locked accounts"));
  let found;
  const filters = { email: params.get("email"), name: params.get("name"), practice_id: params.get("practice_id"), id: params.get("id"),
                    locked: params.get("locked") === "true" ? "true" : null, limit: params.get("limit"), after: params.get("after") };
  try { found = await api("GET", "/admin/users" + qs(filters)); }
  catch (ex) { supportFailed(seq, "Find users", ex, search()); return; }
  // pages in email order; `after` is the previous page's last user (an id, not an address)
  const pageLink = (after, text) => h("a", { href: "#/support/users" + qs({ ...Object.fromEntries(params), after }) }, text);
  pageFor(seq, "Find users", supportNav(), search(),
    found.users.length ? supportUsers(found.users, () => viewSupportUsers(params), true) : h("p", { class: "hint" }, "No user matches."),
    h("p", { class: "row" }, params.get("after") ? pageLink(null, "First page") : null,
      found.next ? pageLink(found.next, "More users") : null));
}

function auditDetails(details) {
  return Object.entries(details || {}).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("; ");
}

async function viewAudit(params) {
  const seq = routeSeq;  // a slower, older view must not replace a newer one
  const iso = (v) => { const d = new Date(v); return v && !isNaN(d) ? d.toISOString() : v; };  // the API says what is wrong
  const filters = { subject_id: params.get("subject_id"), actor_id: params.get("actor_id"), practice_id: params.get("practice_id"),
                    action: params.get("action"), since: iso(params.get("since")), until: iso(params.get("until")) };
  const limit = Number(params.get("limit")) || 100;
  const query = { ...filters, before_id: params.get("before_id"), limit };
  const search = () => filterForm("#/support/audit", params, [
    ["Subject (user id)", "subject_id", { autocomplete: "off" }], ["Actor (user id)", "actor_id", { autocomplete: "off" }],
    ["Practice id", "practice_id", { autocomplete: "off" }], ["Action", "action", { list: "audit-actions", autocomplete: "off" }],
    ["From", "since", { type: "datetime-local" }, "In this computer's time zone."], ["Until", "until", { type: "datetime-local" }],
    ["Rows per page", "limit", { type: "number", min: 1, max: 5000, inputmode: "numeric" }, "1 to 5000; 100 when empty."]],
  "Show entries", h("datalist", { id: "audit-actions" }, AUDIT_ACTIONS.map((a) => h("option", { value: a }))));
  let entries;
  try { entries = (await api("GET", "/admin/audit" + qs(query))).entries; } catch (ex) { supportFailed(seq, "Audit trail", ex, search()); return; }
  const pageLink = (before_id, text) => h("a", { href: "#/support/audit" + qs({ ...Object.fromEntries(params), before_id }) }, text);
  const idLink = (href, id) => id ? h("a", { href }, id) : "";
  // a user id: their trail, and who they are
  const userLink = (key, id) => id ? [idLink("#/support/audit" + qs({ [key]: id }), id), " ",
    h("a", { href: "#/support/users" + qs({ id }), "aria-label": `Who is ${id}?` }, "who?")] : "";
  const rows = entries.map((e) => h("tr", {},
    cell("Time", fmtDate(e.at)), cell("Action", e.action),
    cell("Outcome", h("span", { class: "badge" + (e.outcome === "ok" ? " good" : " bad") }, e.outcome)),
    cell("Actor", userLink("actor_id", e.actor_id)),
    cell("Subject", userLink("subject_id", e.subject_id)),
    cell("Practice", idLink(`#/support/practice?id=${encodeURIComponent(e.practice_id)}`, e.practice_id)),
    cell("IP", e.ip || ""), cell("Details", auditDetails(e.details))));
  pageFor(seq, "Audit trail", supportNav(), search(),
    h("p", { class: "row" }, h("a", { class: "button", href: "/api/v1/admin/audit" + qs({ ...query, format: "csv" }), download: "audit.csv" }, "Download CSV"),
      h("span", { class: "hint" }, `${entries.length} entries shown, newest first. The CSV file has the same entries.`)),
    entries.length ? h("div", { class: "table-wrap" }, h("table", { class: "stack audit", id: "audit" },
      h("thead", {}, h("tr", {}, ["Time", "Action", "Outcome", "Actor", "Subject", "Practice", "IP", "Details"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))) : h("p", { class: "hint" }, "No entries match these filters."),
    h("p", { class: "row" }, params.get("before_id") ? pageLink(null, "Newest entries") : null,
      entries.length === limit ? pageLink(entries[entries.length - 1].id, "Older entries") : null));
}

// ---- navigation ----------------------------------------------------------------------------------------
function renderNav() {
  const nav = document.getElementById("nav");
  nav.hidden = !state.csrf;
  // Until a forced step is done (expired password, phone not verified) only "Log out" is offered.
  for (const a of nav.querySelectorAll("a")) a.hidden = !!state.restriction;
  const manager = state.user && (state.user.roles || []).includes("user_manager");
  document.getElementById("nav-users").hidden = !manager || !!state.restriction;
  document.getElementById("nav-invoices").hidden = !manager || !!state.restriction;
  const support = state.user && (state.user.roles || []).includes("support");
  document.getElementById("nav-support").hidden = !support || !!state.restriction;
  // The account menu: named after the user, closed again on every page change.
  const menu = document.getElementById("account-menu");
  menu.open = false;
  menu.hidden = !!state.restriction;
  const u = state.user || {};
  document.getElementById("account-name").textContent = [u.first_name, u.last_name].filter(Boolean).join(" ") || u.email || "My account";
  // The current page's link: the one naming this exact address if there is one (Messaging on
  // #/profile?tab=messaging), else the one for its path or a parent path (#/users on #/users/edit).
  const here = location.hash || "#/inbox";
  const path = here.split("?")[0];
  const links = Array.from(nav.querySelectorAll("a"));
  const exact = links.some((a) => a.getAttribute("href") === here && here !== path);
  for (const a of links) {
    const href = a.getAttribute("href");
    const current = exact ? href === here : href === path || path.startsWith(href + "/");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

const PUBLIC = {
  "#/login": viewLogin, "#/forgot": viewForgot, "#/reset": viewReset, "#/register": viewRegister,
};
const PRIVATE = {
  "#/inbox": () => viewFolder("inbox"), "#/sent": () => viewFolder("sent"), "#/compose": viewCompose,
  "#/message": viewMessage, "#/profile": viewProfile, "#/users": viewUsers, "#/users/edit": viewEditUser,
  "#/change-password": viewChangePassword, "#/verify-phone": viewVerifyPhone, "#/invoices": viewInvoices, "#/confirm-email": viewConfirmEmail,
  "#/support": viewPractices, "#/support/new-practice": viewNewPractice, "#/support/practice": viewPractice,
  "#/support/users": viewSupportUsers, "#/support/audit": viewAudit,
};

async function route() {
  const [path, query] = (location.hash || "#/").split("?");
  const params = new URLSearchParams(query || "");
  const mySeq = ++routeSeq;
  say(pendingFlash || "");
  pendingFlash = null;
  renderNav();
  if (PUBLIC[path]) return PUBLIC[path](params);
  if (!state.csrf) {
    try {
      adopt(await api("GET", "/session"));
      // The session names only the user's id and roles; the profile has the time zone for dates.
      try { state.user = { ...state.user, ...(await api("GET", "/me")).user }; renderNav(); } catch (_ignored) { /* not needed to go on */ }
    }
    catch (_ignored) {
      if (path !== "#/" && path !== "#/inbox") sessionStorage.setItem("after_login", location.hash);
      location.hash = "#/login"; return;
    }
  }
  if (mySeq !== routeSeq) return;  // the user went elsewhere meanwhile
  if (state.restriction === "password_expired" && path !== "#/change-password") { location.hash = "#/change-password"; return; }
  if (state.restriction === "verification_required" && path !== "#/verify-phone") { location.hash = "#/verify-phone"; return; }
  (PRIVATE[path] || PRIVATE["#/inbox"])(params);
}

document.addEventListener("DOMContentLoaded", () => {
  // Links in emails may use a path (/reset?token=...) instead of a hash: normalise to the hash.
  if (location.pathname !== "/" && !location.hash) {
    const target = "#" + location.pathname + location.search;
    history.replaceState(null, "", "/" + target);
  }
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/session"); } catch (_ignored) { /* signed out either way */ }
    signedOut("You have been logged out.");
  });
  // The account menu closes when the user clicks elsewhere or presses Escape.
  const menu = document.getElementById("account-menu");
  // A link in it closes it too: the page it names may be the one already shown (no route change).
  document.addEventListener("click", (e) => {
    if (menu.open && (!menu.contains(e.target) || (e.target.closest && e.target.closest(".menu a")))) menu.open = false;
  });
  // iOS fires no click on plain elements: a touch outside the menu closes it as well.
  document.addEventListener("touchstart", (e) => { if (menu.open && !menu.contains(e.target)) menu.open = false; }, { passive: true });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && menu.open) { menu.open = false; menu.querySelector("summary").focus(); }
  });
  window.addEventListener("hashchange", route);
  route();
});
