// MySecurePractice web app: plain JavaScript, no build step, hash routes (#/login, #/reset?token=...).
// Talks to the gateway's JSON API under /api/v1; state-changing calls carry the CSRF token.
// Everything from the server is inserted as text (never as HTML).
"use strict";

const state = { csrf: null, user: null, restriction: null };
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

function field(label, attrs, hint) {
  const id = attrs.id || "f-" + attrs.name;
  return h("label", { for: id }, label, h("input", { id, ...attrs }), hint ? h("span", { class: "hint" }, hint) : null);
}

function page(title, ...children) {
  const box = main();
  box.replaceChildren(h("h1", {}, title), ...children);
  document.title = title + " · MySecurePractice";
  box.focus();
}

function say(text) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.hidden = !text;
}

function errorBox() {
  return h("div", { class: "error", role: "alert", hidden: true });
}

function showError(box, err) {
  box.textContent = err && err.message ? err.message : "Something went wrong. Please try again.";
  const fields = err && err.details && err.details.fields;
  if (fields) box.append(h("ul", {}, Object.values(fields).map((m) => h("li", {}, m))));
  const violations = err && err.details && err.details.violations;
  if (Array.isArray(violations)) box.append(h("ul", {}, violations.map((v) => h("li", {}, v.message || v))));
  box.hidden = false;  // role="alert": screen readers announce it
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
  if (!resp.ok) {
    const err = new ApiError(resp.status, data);
    if (resp.status === 401 && err.code === "session_expired") signedOut("Your session has ended: you are signed out after 30 minutes of inactivity. Please sign in again.");
    throw err;
  }
  return data;
}

function adopt(answer) {
  // Any answer that signs in (login, registration, reset, password change) carries these.
  if (answer && answer.csrf_token) state.csrf = answer.csrf_token;
  if (answer && answer.user) state.user = answer.user;
  if (answer && "restriction" in answer) state.restriction = answer.restriction;
  renderNav();
}

function signedOut(message) {
  state.csrf = null; state.user = null; state.restriction = null;
  renderNav();
  if (message) say(message);
  if (!location.hash.startsWith("#/login")) location.hash = "#/login";
}

function afterSignIn() {
  if (state.restriction === "password_expired") location.hash = "#/change-password";
  else if (state.restriction === "verification_required") location.hash = "#/verify-phone";
  else location.hash = "#/inbox";
}

// ---- password rules, shown live -------------------------------------------------------------------
const DEFAULT_RULES = { min_length: 8, requires_lower_upper_digit_special: true };

function passwordChecks(rules) {
  rules = rules || DEFAULT_RULES;
  const checks = [[`At least ${rules.min_length} characters`, (p) => p.length >= rules.min_length]];
  if (rules.requires_lower_upper_digit_special) {
    checks.push(
      ["A lower case letter (a-z)", (p) => /[a-z]/.test(p)],
      ["An upper case letter (A-Z)", (p) => /[A-Z]/.test(p)],
      ["A number (0-9)", (p) => /[0-9]/.test(p)],
      ["A special character, such as ! ? # %", (p) => /[^A-Za-z0-9]/.test(p)],
    );
  }
  if (rules.history) checks.push(["Not one of your last 6 passwords (checked when you save)", null]);
  return checks;
}

function passwordFields(rules, label = "New password") {
  const input = h("input", { id: "f-password", name: "password", type: "password", autocomplete: "new-password", required: true, "aria-describedby": "pw-rules" });
  const confirm = h("input", { id: "f-confirm", name: "confirm", type: "password", autocomplete: "new-password", required: true });
  const checks = passwordChecks(rules);
  const items = checks.map(([text]) => h("li", { class: "missing" }, text));
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
  const note = h("p", { class: "notice" },
    "We will send a 6-digit code to ", h("strong", {}, verification.phone_hint || "your phone"), ". ",
    "Be sure the phone number does not have a dial tree, or the call will not be able to get through to you.");
  let current = null;
  const codeInput = h("input", { id: "f-code", name: "code", inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}", maxlength: 6, required: true });
  const codeForm = h("form", { hidden: true, onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    try {
      const answer = await api("POST", `/verifications/${encodeURIComponent(current.id)}/check`, { code: codeInput.value.trim() });
      await onProof(answer.proof);
    } catch (ex) { showError(err, ex); }
  } }, h("label", { for: "f-code" }, "Verification code", codeInput), h("button", { type: "submit" }, "Verify"));
  const send = (channel) => async () => {
    err.hidden = true;
    try {
      current = await api("POST", "/verifications", { ticket: verification.ticket, channel });
      codeForm.hidden = false;
      say(channel === "call" ? "We are calling you with your code." : "We have sent you a text message with your code.");
      codeInput.focus();
    } catch (ex) { showError(err, ex); }
  };
  return h("section", { "aria-labelledby": "two-step-h" },
    h("h2", { id: "two-step-h" }, "2-Step Verification"), note,
    h("div", { class: "row" },
      h("button", { type: "button", onclick: send("sms") }, "Text me a code"),
      h("button", { type: "button", class: "secondary", onclick: send("call") }, "Call me with a code")),
    h("p", { class: "hint" }, "Didn't get it? You can ask again, by text or by call."),
    codeForm, err);
}

// ---- views --------------------------------------------------------------------------------------------
function viewLogin() {
  const err = errorBox();
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const fd = new FormData(form);
    try {
      adopt(await api("POST", "/session", { email: fd.get("email"), password: fd.get("password") }));
      say("");
      afterSignIn();
    } catch (ex) {
      if (ex.code === "account_locked") {
        ex.message = "Your account is locked after 5 unsuccessful attempts. Reset your password to unlock it, or contact PBHS Support.";
      } else if (ex.code === "rate_limited") {
        ex.message = "Too many attempts. Please wait a few minutes and try again.";
      }
      showError(err, ex);
      if (ex.code === "account_locked" || ex.code === "password_reset_required") err.append(" ", h("a", { href: "#/forgot" }, "Reset my password"));
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
  const token = params.get("token") || "";
  const err = errorBox();
  page("Reset your password", h("div", { class: "card narrow" }, h("p", {}, "Loading…"), err));
  let info;
  try { info = await api("POST", "/password/reset/verification", { token }); }
  catch (ex) { const box = errorBox(); showError(box, ex); page("Reset your password", h("div", { class: "card narrow" }, box, h("a", { href: "#/forgot" }, "Ask for a new link"))); return; }
  let proof = null;
  const pw = passwordFields(info.password_rules);
  const form = h("form", { hidden: info.two_step, onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    if (!pw.valid()) { showError(err, { message: "Please choose a password that meets every rule." }); return; }
    try {
      adopt(await api("POST", "/password/reset", { token, password: pw.value(), proof }));
      say("Your password has been changed.");
      afterSignIn();
    } catch (ex) { showError(err, ex); }
  } }, ...pw.nodes, h("button", { type: "submit" }, "Save new password"));
  const parts = [];
  if (info.two_step) {
    parts.push(twoStep(info.verification, async (p) => { proof = p; form.hidden = false; say("Phone verified. Now choose a new password."); }));
  }
  page("Reset your password", h("div", { class: "card narrow" }, ...parts, form, err));
}

async function viewRegister(params) {
  const token = params.get("token") || "";
  let inv;
  try { inv = await api("GET", `/invitations/${encodeURIComponent(token)}`); }
  catch (ex) { const box = errorBox(); showError(box, ex); page("Register", h("div", { class: "card narrow" }, box)); return; }
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
      if (answer.verification) {
        page("Verify your phone", h("div", { class: "card narrow" }, twoStep(answer.verification, finishVerification("/registrations/verify"))));
      } else { say("Welcome! Your account is ready."); afterSignIn(); }
    } catch (ex) { showError(err, ex); }
  } },
    h("p", {}, "You were invited to MySecurePractice", inv.practice_name ? ` by ${inv.practice_name}` : "", " as ", h("strong", {}, inv.email), "."),
    field("First name", { name: "first_name", autocomplete: "given-name", required: true, value: inv.first_name || "" }),
    field("Last name", { name: "last_name", autocomplete: "family-name", required: true, value: inv.last_name || "" }),
    inv.two_step_required ? field("Phone for 2-Step Verification", { name: "phone", type: "tel", autocomplete: "tel" },
      (inv.phone_hint ? `Leave empty to use ${inv.phone_hint}. ` : "") + "Use a number without a dial tree: an automated menu stops the call from reaching you.") : null,
    ...pw.nodes,
    h("label", { class: "check", for: "f-terms" }, h("input", { id: "f-terms", name: "accept_terms", type: "checkbox", required: true }),
      `I have read and accept the Terms of Use (version ${inv.terms_version}).`),
    h("button", { type: "submit" }, "Create my account"), err);
  page("Register", h("div", { class: "card narrow" }, form));
}

function finishVerification(path) {
  return async (proof) => {
    adopt(await api("POST", path, { proof }));
    say("Your phone number is verified.");
    afterSignIn();
  };
}

async function viewVerifyPhone() {
  const err = errorBox();
  try {
    const answer = await api("POST", "/me/verification/ticket", {});
    page("Verify your phone", h("div", { class: "card narrow" }, twoStep(answer.verification, finishVerification("/me/verification")), err));
  } catch (ex) { showError(err, ex); page("Verify your phone", h("div", { class: "card narrow" }, err)); }
}

function viewChangePassword() {
  const err = errorBox();
  const pw = passwordFields(null);
  const current = h("input", { id: "f-current", name: "current_password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    if (!pw.valid()) { showError(err, { message: "Please choose a password that meets every rule." }); return; }
    try {
      adopt(await api("POST", "/me/password", { current_password: current.value, new_password: pw.value() }));
      say("Your password has been changed. Other devices have been signed out.");
      afterSignIn();
    } catch (ex) { showError(err, ex); }
  } },
    state.restriction === "password_expired" ? h("p", { class: "notice" }, "Your password has expired (passwords expire every 90 days). Please choose a new one to continue.") : null,
    h("label", { for: "f-current" }, "Current password", current), ...pw.nodes,
    h("button", { type: "submit" }, "Change password"), err);
  page("Change password", h("div", { class: "card narrow" }, form));
}

async function viewProfile() {
  const err = errorBox();
  let me;
  try { me = (await api("GET", "/me")).user; } catch (ex) { showError(err, ex); page("Profile", err); return; }
  const form = h("form", { onsubmit: async (e) => {
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
    try { const answer = await api("PATCH", "/me", patch); me = answer.user || me; say("Your profile has been saved."); }
    catch (ex) { showError(err, ex); }
  } },
    field("First name", { name: "first_name", value: me.first_name || "", autocomplete: "given-name" }),
    field("Last name", { name: "last_name", value: me.last_name || "", autocomplete: "family-name" }),
    field("Email address", { name: "email", type: "email", value: me.email || "", autocomplete: "email" },
      me.pending_email ? `Waiting for confirmation of ${me.pending_email}.` : "A new address is used once you confirm it from your inbox."),
    field("Phone", { name: "phone", type: "tel", value: me.phone || "" }, "Used for 2-Step Verification; it must not have a dial tree."),
    field("Cell phone", { name: "cell_phone", type: "tel", value: me.cell_phone || "" }),
    field("Time zone", { name: "time_zone", value: me.time_zone || "", placeholder: "America/New_York" }),
    field("ADA number", { name: "ada_number", value: me.ada_number || "" }),
    field("Specialties", { name: "specialties", value: (me.specialties || []).join(", ") }, "Separate several with commas."),
    h("label", { class: "check", for: "f-2step" }, h("input", { id: "f-2step", name: "two_step_required", type: "checkbox", checked: !!me.two_step_required }),
      "Use 2-Step Verification when I set or reset my password"),
    h("div", { class: "row" }, h("button", { type: "submit" }, "Save"), h("a", { href: "#/change-password" }, "Change password")),
    err);
  const practice = me.practice ? h("p", { class: "hint" }, `Practice: ${me.practice.name || ""}. Practice details can only be changed by PBHS Support.`) : null;
  const expiry = me.password_expiry_warning_days ? h("p", { class: "notice" }, `Your password expires in ${me.password_expiry_warning_days} days.`) : null;
  page("Profile", expiry, h("div", { class: "card" }, practice, form));
}

async function viewUsers() {
  const err = errorBox();
  let users;
  try { users = (await api("GET", "/practice/users")).users; } catch (ex) { showError(err, ex); page("Manage Users", err); return; }
  const statusBadge = (u) => {
    if (u.locked) return h("span", { class: "badge bad" }, "Locked");
    if (u.status === "verified") return h("span", { class: "badge good" }, "Registered and verified");
    if (u.status === "registered_unverified") return h("span", { class: "badge" }, "Registered, 2-step not completed");
    return h("span", { class: "badge" }, "Invited");
  };
  const act = (fn, okText) => async () => { err.hidden = true; try { await fn(); say(okText); viewUsers(); } catch (ex) { showError(err, ex); } };
  const rows = users.map((u) => h("tr", {},
    h("td", {}, `${u.first_name || ""} ${u.last_name || ""}`.trim() || "—", h("br"), h("span", { class: "hint" }, u.email)),
    h("td", {}, statusBadge(u)),
    h("td", {}, h("label", { class: "check" },
      h("input", { type: "checkbox", checked: !!u.two_step_required, disabled: !u.own_practice,
                   onchange: (e) => act(() => api("PATCH", `/practice/users/${u.id}`, { two_step_required: e.target.checked }), "2-Step Verification setting saved.")() }),
      "2-Step")),
    h("td", {}, h("div", { class: "row" },
      h("button", { type: "button", class: "secondary", onclick: act(() => api("POST", `/practice/users/${u.id}/reinvite`, {}), "Invitation sent again.") }, "Re-invite"),
      u.own_practice ? h("button", { type: "button", class: "secondary", onclick: () => editUser(u) }, "Edit") : null))));
  page("Manage Users",
    h("p", { class: "hint" }, "Users invited to your practice, registered or not. You cannot invite users from this page."),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "User"), h("th", {}, "Status"), h("th", {}, "Verification"), h("th", {}, "Actions"))),
      h("tbody", {}, rows)), err);
}

function editUser(u) {
  const err = errorBox();
  const invited = u.status === "invited";
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const fd = new FormData(form);
    try {
      await api("PATCH", `/practice/users/${u.id}`, { email: fd.get("email"), phone: fd.get("phone") || null, cell_phone: fd.get("cell_phone") || null });
      say("Saved. Ask the user to follow the registration link again, or re-invite them.");
      viewUsers();
    } catch (ex) { showError(err, ex); }
  } },
    field("Email address", { name: "email", type: "email", value: u.email, disabled: !invited }),
    field("Phone", { name: "phone", type: "tel", value: u.phone || "", disabled: !invited }),
    field("Cell phone", { name: "cell_phone", type: "tel", value: u.cell_phone || "", disabled: !invited }),
    invited ? h("button", { type: "submit" }, "Save") : h("p", { class: "hint" }, "Registered users edit their own contact details."));
  const buy = u.securemail_paid ? h("p", { class: "notice" }, "SecureMail is paid for this user.") :
    h("button", { type: "button", class: "secondary", onclick: async () => {
      if (!window.confirm(`Purchase SecureMail for ${u.email}? This adds $10/month to the card on file.`)) return;
      try { await api("POST", "/billing/securemail", { user_id: u.id }); say("SecureMail purchased; access is granted now."); viewUsers(); }
      catch (ex) { showError(err, ex); }
    } }, "Purchase SecureMail for this User");
  page(`Edit ${u.email}`, h("div", { class: "card narrow" }, form, h("h2", {}, "SecureMail"), buy, err,
    h("p", {}, h("a", { href: "#/users" }, "Back to Manage Users"))));
}

async function viewFolder(folder) {
  const err = errorBox();
  const title = folder === "sent" ? "Sent" : "Inbox";
  let list = [];
  try { const answer = await api("GET", `/messages?folder=${folder}`); list = answer.messages || answer.items || []; }
  catch (ex) { showError(err, ex); }
  const rows = list.map((m) => h("tr", {},
    h("td", {}, folder === "sent" ? [].concat(m.to || []).join(", ") : m.from || m.sender || ""),
    h("td", {}, h("a", { href: `#/message?id=${encodeURIComponent(m.id)}` }, m.subject || "(no subject)")),
    h("td", {}, m.sent_at ? new Date(m.sent_at).toLocaleString() : "")));
  page(title, list.length ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, folder === "sent" ? "To" : "From"), h("th", {}, "Subject"), h("th", {}, "Date"))), h("tbody", {}, rows))
    : h("p", { class: "hint" }, "No messages."), err);
}

async function viewMessage(params) {
  const err = errorBox();
  try {
    const m = await api("GET", `/messages/${encodeURIComponent(params.get("id") || "")}`);
    const msg = m.message || m;
    page(msg.subject || "(no subject)",
      h("p", { class: "hint" }, `From ${msg.from || ""}`),
      h("div", { class: "card" }, h("p", {}, msg.body || "")),
      (msg.attachments || []).length ? h("ul", {}, msg.attachments.map((a) => h("li", {},
        h("a", { href: `/api/v1/messages/${encodeURIComponent(msg.id)}/attachments/${encodeURIComponent(a.id)}` }, a.name || a.filename || "attachment")))) : null);
  } catch (ex) { showError(err, ex); page("Message", err); }
}

function viewCompose() {
  const err = errorBox();
  const form = h("form", { onsubmit: async (e) => {
    e.preventDefault(); err.hidden = true;
    const button = form.querySelector("button"); button.disabled = true;
    try { await api("POST", "/messages", new FormData(form)); say("Your secure message has been sent."); location.hash = "#/sent"; }
    catch (ex) { showError(err, ex); } finally { button.disabled = false; }
  } },
    field("To", { name: "to", type: "email", multiple: true, required: true }, "Separate several addresses with commas."),
    field("Subject", { name: "subject", required: true }),
    h("label", { for: "f-body" }, "Message", h("textarea", { id: "f-body", name: "body", required: true })),
    field("Attachments", { name: "files", type: "file", multiple: true }, "Up to 300 MB in total per message."),
    h("button", { type: "submit" }, "Send securely"), err);
  page("Compose", h("div", { class: "card" }, form));
}

// ---- navigation ----------------------------------------------------------------------------------------
function renderNav() {
  const nav = document.getElementById("nav");
  nav.hidden = !state.csrf;
  const manager = state.user && (state.user.roles || []).includes("user_manager");
  document.getElementById("nav-users").hidden = !manager;
  const here = location.hash.split("?")[0];
  for (const a of nav.querySelectorAll("a")) {
    if (a.getAttribute("href") === here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

const PUBLIC = {
  "#/login": viewLogin, "#/forgot": viewForgot, "#/reset": viewReset, "#/register": viewRegister,
};
const PRIVATE = {
  "#/inbox": () => viewFolder("inbox"), "#/sent": () => viewFolder("sent"), "#/compose": viewCompose,
  "#/message": viewMessage, "#/profile": viewProfile, "#/users": viewUsers,
  "#/change-password": viewChangePassword, "#/verify-phone": viewVerifyPhone,
};

async function route() {
  const [path, query] = (location.hash || "#/").split("?");
  const params = new URLSearchParams(query || "");
  renderNav();
  if (PUBLIC[path]) return PUBLIC[path](params);
  if (!state.csrf) {
    try { adopt(await api("GET", "/session")); }
    catch { location.hash = "#/login"; return; }
  }
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
    try { await api("DELETE", "/session"); } catch { /* signed out either way */ }
    signedOut("You have been logged out.");
  });
  window.addEventListener("hashchange", route);
  route();
});
