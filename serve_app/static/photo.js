// The photo and its prompts: choose or drop a photo, click (object), shift/right-click (background),
// drag a box; the current mask is drawn over the photo. Coordinates are photo pixels of the photo as
// the browser shows it: <img> applies the EXIF orientation, as the server does on upload, so a click
// lands on the same pixel on both sides.

/** An image, decoded, or null when it cannot be loaded or decoded. */
async function loadImage(url) {
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
    return img;
  } catch {
    return null;
  }
}

function boxFrom(a, b) {
  return { x_min: Math.min(a.x, b.x), y_min: Math.min(a.y, b.y), x_max: Math.max(a.x, b.x), y_max: Math.max(a.y, b.y) };
}

export class PhotoPanel {
  /** `el`: { file, fileName, wrap, photo, overlay, summary, undo, clear }. */
  constructor(el, { onPhoto = () => {}, onPrompts = () => {} } = {}) {
    this.el = el;
    this.onPhoto = onPhoto;
    this.onPrompts = onPrompts;
    this.photo = null; // {file, url, width, height}
    this.points = [];
    this.box = null;
    this.history = [];
    this.drag = null;
    this.maskLayer = null;
    this._bind();
  }

  prompts() {
    return { points: this.points.slice(), box: this.box };
  }

  async load(file) {
    if (!file) return;
    const url = URL.createObjectURL(file);
    const probe = await loadImage(url);
    if (!probe) {
      URL.revokeObjectURL(url);
      this.el.fileName.textContent = `${file.name}: not an image this browser can show`;
      this.el.fileName.classList.add("bad");
      return;
    }
    if (this.photo) URL.revokeObjectURL(this.photo.url);
    // naturalWidth/Height are after the EXIF orientation (CSS image-orientation: from-image).
    this.photo = { file, url, width: probe.naturalWidth, height: probe.naturalHeight };
    this.el.photo.src = url;
    this.el.photo.hidden = false;
    await this.el.photo.decode().catch(() => {});
    this.el.wrap.classList.remove("empty");
    this.el.fileName.classList.remove("bad");
    this.el.fileName.textContent = `${file.name} · ${this.photo.width}×${this.photo.height}`;
    this.points = [];
    this.box = null;
    this.history = [];
    this.maskLayer = null;
    this.layout();
    this._changed(false);
    this.onPhoto(this.photo);
  }

  /** Show a 0/1 mask (null: none) of w × h pixels over the whole photo (default: the photo's size):
   * a blue tint inside, a bright edge. */
  setMask(mask, w = this.photo?.width, h = this.photo?.height) {
    if (!mask || !this.photo) {
      this.maskLayer = null;
      this.draw();
      return;
    }
    const layer = document.createElement("canvas");
    layer.width = w;
    layer.height = h;
    const ctx = layer.getContext("2d");
    const px = ctx.createImageData(w, h);
    const d = px.data;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!mask[i]) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
        d.set(edge ? [120, 200, 255, 255] : [60, 140, 255, 90], 4 * i);
      }
    }
    ctx.putImageData(px, 0, 0);
    this.maskLayer = layer;
    this.draw();
  }

  layout() {
    if (!this.photo) return;
    const dpr = window.devicePixelRatio || 1;
    const img = this.el.photo;
    Object.assign(this.el.overlay.style, {
      left: `${img.offsetLeft}px`, top: `${img.offsetTop}px`, width: `${img.offsetWidth}px`, height: `${img.offsetHeight}px`,
    });
    this.el.overlay.width = Math.round(img.offsetWidth * dpr);
    this.el.overlay.height = Math.round(img.offsetHeight * dpr);
    this.draw();
  }

  draw() {
    const c = this.el.overlay;
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    if (!this.photo) return;
    const k = c.width / this.photo.width;
    const dpr = window.devicePixelRatio || 1;
    if (this.maskLayer) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(this.maskLayer, 0, 0, c.width, c.height);
    }
    const d = this.drag;
    const shown = d && d.moved && !d.background ? boxFrom(d.from, d.to) : this.box;
    if (shown) {
      ctx.save();
      ctx.lineWidth = 2 * dpr;
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.strokeStyle = "#ffd23f";
      ctx.strokeRect(shown.x_min * k, shown.y_min * k, (shown.x_max - shown.x_min) * k, (shown.y_max - shown.y_min) * k);
      ctx.restore();
    }
    for (const p of this.points) {
      const x = p.x * k;
      const y = p.y * k;
      const r = 7 * dpr;
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fillStyle = p.label ? "#2ecc71" : "#e74c3c";
      ctx.fill();
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }

  _toPhoto(e) {
    const r = this.el.overlay.getBoundingClientRect();
    const x = ((e.clientX - r.left) / r.width) * this.photo.width;
    const y = ((e.clientY - r.top) / r.height) * this.photo.height;
    return {
      x: Math.min(this.photo.width - 1, Math.max(0, Math.round(x * 10) / 10)),
      y: Math.min(this.photo.height - 1, Math.max(0, Math.round(y * 10) / 10)),
    };
  }

  _changed(notify = true) {
    const obj = this.points.filter((p) => p.label).length;
    const bg = this.points.length - obj;
    const b = this.box;
    this.el.summary.textContent = [`${obj} object point${obj === 1 ? "" : "s"}`, `${bg} background point${bg === 1 ? "" : "s"}`,
      b ? `box ${Math.round(b.x_max - b.x_min)}×${Math.round(b.y_max - b.y_min)}` : "no box"].join(", ");
    this.el.undo.disabled = this.history.length === 0;
    this.el.clear.disabled = !this.points.length && !this.box;
    this.draw();
    if (notify) this.onPrompts(this.prompts());
  }

  _remember() {
    this.history.push({ points: this.points.slice(), box: this.box });
  }

  _bind() {
    const { el } = this;
    el.overlay.addEventListener("contextmenu", (e) => e.preventDefault());
    el.overlay.addEventListener("pointerdown", (e) => {
      if (!this.photo || e.button === 1) return;
      e.preventDefault();
      el.overlay.setPointerCapture(e.pointerId);
      const at = this._toPhoto(e);
      this.drag = { from: at, to: at, x: e.clientX, y: e.clientY, moved: false, background: e.shiftKey || e.button === 2 };
    });
    el.overlay.addEventListener("pointermove", (e) => {
      if (!this.drag) return;
      this.drag.to = this._toPhoto(e);
      if (Math.hypot(e.clientX - this.drag.x, e.clientY - this.drag.y) > 5) this.drag.moved = true;
      if (this.drag.moved) this.draw();
    });
    el.overlay.addEventListener("pointerup", (e) => {
      if (!this.drag) return;
      const d = this.drag;
      this.drag = null;
      d.to = this._toPhoto(e);
      const b = boxFrom(d.from, d.to);
      if (d.moved && !d.background && b.x_max - b.x_min >= 3 && b.y_max - b.y_min >= 3) {
        this._remember();
        this.box = b;
      } else if (!d.moved) {
        this._remember();
        this.points.push({ x: d.from.x, y: d.from.y, label: d.background ? 0 : 1 });
      } else {
        this.draw();
        return;
      }
      this._changed();
    });
    el.overlay.addEventListener("pointercancel", () => {
      this.drag = null;
      this.draw();
    });
    el.undo.addEventListener("click", () => {
      const last = this.history.pop();
      if (last) ({ points: this.points, box: this.box } = last);
      this._changed();
    });
    el.clear.addEventListener("click", () => {
      this._remember();
      this.points = [];
      this.box = null;
      this._changed();
    });
    el.file.addEventListener("change", () => this.load(el.file.files[0]));
    el.wrap.addEventListener("dragover", (e) => {
      e.preventDefault();
      el.wrap.classList.add("drop");
    });
    el.wrap.addEventListener("dragleave", () => el.wrap.classList.remove("drop"));
    el.wrap.addEventListener("drop", (e) => {
      e.preventDefault();
      el.wrap.classList.remove("drop");
      const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
      if (file) this.load(file);
    });
    new ResizeObserver(() => this.layout()).observe(el.photo);
  }
}
