// Progress of a run: one row per pipeline stage (shown as soon as the stage starts), the overall bar,
// the error box and the event log. Stage names follow serve_app/protocol STAGES.

export const STAGES = [
  ["request", "Request"],
  ["prompt_enhancer", "Prompt"],
  ["image_generator", "Image"],
  ["segmenter", "Segmenting"],
  ["queue", "Waiting for a GPU"],
  ["geometry", "Geometry"],
  ["appearance", "Colours"],
  ["mesh_baker", "Meshing"],
  ["store", "Saving"],
];
const TEXT_ONLY = new Set(["prompt_enhancer", "image_generator"]);
const LOG_LIMIT = 300;

export class Progress {
  /** `el`: { stages (ol), overall, overallBar, overallText, error, log }. */
  constructor(el) {
    this.el = el;
    this.rows = new Map();
    for (const [name, title] of STAGES) {
      const li = document.createElement("li");
      li.dataset.stage = name;
      li.innerHTML = '<span class="mark"></span><span class="name"></span><div class="bar small"><div class="fill"></div></div><span class="detail"></span>';
      li.querySelector(".name").textContent = title;
      el.stages.append(li);
      this.rows.set(name, { li, fill: li.querySelector(".fill"), detail: li.querySelector(".detail") });
    }
    this.current = null;
    this.reset(false);
  }

  /** Back to "nothing started"; `text` shows the text-to-3D stages too. */
  reset(text) {
    for (const [name, row] of this.rows) {
      row.li.className = "pending";
      row.li.hidden = TEXT_ONLY.has(name) && !text;
      row.fill.style.width = "0";
      row.detail.textContent = "";
    }
    this.current = null;
    this.setOverall(0);
    this.el.overall.classList.remove("done", "failed");
    this.el.error.hidden = true;
  }

  setOverall(p) {
    this.el.overallBar.style.width = `${(p * 100).toFixed(1)}%`;
    this.el.overallText.textContent = `${Math.floor(p * 100 + 1e-9)} %`;
  }

  /** A stage is under way (earlier ones are done): `step`/`total` fill its bar, `detail` says what. */
  stage(name, step, total, detail) {
    const at = STAGES.findIndex(([n]) => n === name);
    if (at < 0) return;
    STAGES.forEach(([n], i) => {
      const row = this.rows.get(n);
      if (i < at && row.li.className !== "done" && !row.li.hidden) {
        row.li.className = "done";
        row.fill.style.width = "100%";
      }
    });
    const row = this.rows.get(name);
    row.li.hidden = false;
    row.li.className = total > 0 && step >= total ? "done" : "active";
    if (total > 0) row.fill.style.width = `${(100 * step) / total}%`;
    row.detail.textContent = detail;
    row.detail.title = detail;
    this.current = name;
  }

  done() {
    for (const [, row] of this.rows) {
      if (row.li.hidden) continue;
      row.li.className = "done";
      row.fill.style.width = "100%";
    }
    this.setOverall(1);
    this.el.overall.classList.add("done");
  }

  /** Show an error to the person: the server's message, its code in grey. */
  fail(code, message) {
    this.el.error.hidden = false;
    this.el.error.textContent = "";
    const b = document.createElement("b");
    b.textContent = message;
    const c = document.createElement("span");
    c.className = "muted";
    c.textContent = ` (${code})`;
    this.el.error.append(b, c);
    this.el.overall.classList.add("failed");
    const row = this.current && this.rows.get(this.current);
    if (row) row.li.className = "failed";
    this.log(`error ${code}: ${message}`);
  }

  stopped() {
    const row = this.current && this.rows.get(this.current);
    if (row) row.detail.textContent = "stopped";
    this.log("stopped by the user");
  }

  log(text) {
    const li = document.createElement("li");
    li.textContent = text;
    this.el.log.append(li);
    while (this.el.log.childElementCount > LOG_LIMIT) this.el.log.firstElementChild.remove();
    this.el.log.scrollTop = this.el.log.scrollHeight;
  }

  clearLog() {
    this.el.log.textContent = "";
  }
}
