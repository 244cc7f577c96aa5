"use strict";
// Dutch and English for every page of the gateway (docs/web.md). The catalogues (gateway/web/i18n/<lang>.json,
// flat dotted keys) and the site's own reason names come embedded in the page (<script id="boot">), so the
// first picture needs no request. The wire (API, MQTT, metrics) stays language-neutral: only pages translate.
const BOOT = JSON.parse(document.getElementById("boot").textContent || "{}");
const CATALOGUES = BOOT.i18n || {};
const LANG_KEY = "fieldlab.lang";

// ?lang=, then the stored choice, then the browser's languages, else English (as Node-RED's detectLanguage)
function detectLanguage() {
  let stored = null;
  try { stored = localStorage.getItem(LANG_KEY); } catch (e) { /* storage off: fine */ }
  const asked = new URLSearchParams(location.search).get("lang");
  for (const c of [asked, stored, ...(navigator.languages || []), navigator.language]) {
    const l = String(c || "").toLowerCase().split("-")[0];
    if (CATALOGUES[l]) return l;
  }
  return "en";
}
let LANG = detectLanguage();
let NUM1, NUM0;
function formatters() {
  NUM1 = new Intl.NumberFormat(LANG, {minimumFractionDigits: 1, maximumFractionDigits: 1});
  NUM0 = new Intl.NumberFormat(LANG, {maximumFractionDigits: 0});
}
formatters();

// One way to say anything: t(key, {name: value}) with {name} slots. A missing key: English, then the key itself.
function t(key, vars = {}) {
  const text = (CATALOGUES[LANG] || {})[key] ?? (CATALOGUES.en || {})[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
}
function has(key) { return key in (CATALOGUES[LANG] || {}) || key in (CATALOGUES.en || {}); }
// A stop reason's name: the site's own (configuration 'reasons:'), else the catalogue's, else its code.
function reasonName(code) {
  const own = (BOOT.reasons || {})[String(code)];
  if (own && (own[LANG] || own.en)) return own[LANG] || own.en;
  return has(`reason.${code}`) ? t(`reason.${code}`) : String(code);
}
function stateName(name) { return has(`state.${name}`) ? t(`state.${name}`) : name; }

// The one way every number is shown (Intl: a decimal comma in Dutch), so a page and the API compare digit by digit.
const pct = v => (v === null || v === undefined ? "–" : NUM1.format(100 * v) + " %");
const int = v => (v === null || v === undefined ? "–" : NUM0.format(v));
const dec1 = v => NUM1.format(v);
const clock = d => d.toLocaleTimeString(LANG);

const languageListeners = [];
function translatePage() {
  document.documentElement.lang = LANG;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-label]")) e.setAttribute("aria-label", t(e.dataset.i18nLabel));
  for (const b of document.querySelectorAll("[data-lang]")) b.setAttribute("aria-pressed", String(b.dataset.lang === LANG));
  for (const f of languageListeners) f();
}
function setLanguage(lang) {
  if (!CATALOGUES[lang]) return;
  LANG = lang;
  try { localStorage.setItem(LANG_KEY, lang); } catch (e) { /* storage off: this page only */ }
  formatters();
  translatePage();
}
document.addEventListener("click", e => {
  const b = e.target.closest("[data-lang]");
  if (b) setLanguage(b.dataset.lang);
});
