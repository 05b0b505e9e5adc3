// The img2img picture and the mask painted over it. The mask canvas holds the paint in its alpha (shown
// tinted); it is sent as a black and white PNG, white where the server repaints. Extending the canvas
// (outpainting) pads the picture with its own edge and paints the new area white in the mask.

import { base64Of, loaded } from "./images.js";

export class MaskEditor {
  constructor() {
    this.stack = document.getElementById("mask");
    this.image = document.getElementById("image-canvas");
    this.mask = document.getElementById("mask-canvas");
    this.size = document.getElementById("brush_size");
    this.source = null; // the picture's own base64, sent as it is until the canvas is extended
    this.last = null;
    this.mask.addEventListener("pointerdown", (e) => this.down(e));
    this.mask.addEventListener("pointermove", (e) => this.move(e));
    for (const end of ["pointerup", "pointercancel"]) this.mask.addEventListener(end, () => (this.last = null));
    this.size.addEventListener("input", () => {
      document.getElementById("brush_size_shown").textContent = this.size.value;
    });
  }

  get ready() {
    return !this.stack.hidden;
  }

  async load(blob) {
    const url = URL.createObjectURL(blob);
    try {
      const picture = await loaded(url);
      for (const canvas of [this.image, this.mask]) {
        canvas.width = picture.naturalWidth;
        canvas.height = picture.naturalHeight;
      }
      this.image.getContext("2d").drawImage(picture, 0, 0);
      this.source = await base64Of(blob);
      this.stack.hidden = false;
      this.stack.style.aspectRatio = `${picture.naturalWidth} / ${picture.naturalHeight}`;
      const brush = Math.max(1, Math.round(Math.min(picture.naturalWidth, picture.naturalHeight) / 8));
      this.size.value = String(brush);
      this.size.dispatchEvent(new Event("input"));
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  // Where a pointer event falls, in the picture's pixels.
  at(event) {
    const box = this.mask.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * this.mask.width) / box.width,
      y: ((event.clientY - box.top) * this.mask.height) / box.height,
    };
  }

  down(event) {
    event.preventDefault();
    this.mask.setPointerCapture(event.pointerId);
    this.last = this.at(event);
    this.paint(this.last, this.last);
  }

  move(event) {
    if (!this.last) return;
    const next = this.at(event);
    this.paint(this.last, next);
    this.last = next;
  }

  paint(from, to) {
    const g = this.mask.getContext("2d");
    const erasing = document.querySelector("input[name=tool]:checked").value === "eraser";
    g.globalCompositeOperation = erasing ? "destination-out" : "source-over";
    g.strokeStyle = "#fff";
    g.lineWidth = Number(this.size.value);
    g.lineCap = g.lineJoin = "round";
    g.beginPath();
    g.moveTo(from.x, from.y);
    g.lineTo(to.x + 0.01, to.y); // a dab where the pointer went down and did not move
    g.stroke();
  }

  clear() {
    this.mask.getContext("2d").clearRect(0, 0, this.mask.width, this.mask.height);
  }

  invert() {
    const g = this.mask.getContext("2d");
    const pixels = g.getImageData(0, 0, this.mask.width, this.mask.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      pixels.data.set([255, 255, 255, 255 - pixels.data[i + 3]], i);
    }
    g.putImageData(pixels, 0, 0);
  }

  painted() {
    const { data } = this.mask.getContext("2d").getImageData(0, 0, this.mask.width, this.mask.height);
    for (let i = 3; i < data.length; i += 4) if (data[i]) return true;
    return false;
  }

  // Pad `pixels` on `side` (left, right, up, down): the picture stretches its edge there, the mask is white.
  extend(side, pixels) {
    const [w, h] = [this.image.width, this.image.height];
    const dx = side === "left" ? pixels : 0;
    const dy = side === "up" ? pixels : 0;
    const [nw, nh] = side === "left" || side === "right" ? [w + pixels, h] : [w, h + pixels];
    const picture = copy(this.image);
    const paint = copy(this.mask);
    for (const canvas of [this.image, this.mask]) [canvas.width, canvas.height] = [nw, nh];
    const g = this.image.getContext("2d");
    g.drawImage(picture, dx, dy);
    const edges = {
      left: [0, 0, 1, h, 0, 0, pixels, h],
      right: [w - 1, 0, 1, h, w, 0, pixels, h],
      up: [0, 0, w, 1, 0, 0, w, pixels],
      down: [0, h - 1, w, 1, 0, h, w, pixels],
    };
    g.drawImage(picture, ...edges[side]);
    const m = this.mask.getContext("2d");
    m.drawImage(paint, dx, dy);
    m.fillStyle = "#fff";
    m.fillRect(...edges[side].slice(4));
    this.source = null;
    this.stack.style.aspectRatio = `${nw} / ${nh}`;
  }

  async picture() {
    return this.source ?? (await canvasBase64(this.image));
  }

  async maskPicture() {
    const out = copy(this.mask);
    const g = out.getContext("2d");
    const pixels = g.getImageData(0, 0, out.width, out.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const a = pixels.data[i + 3];
      pixels.data.set([a, a, a, 255], i);
    }
    g.putImageData(pixels, 0, 0);
    return canvasBase64(out);
  }
}

function copy(canvas) {
  const out = document.createElement("canvas");
  [out.width, out.height] = [canvas.width, canvas.height];
  out.getContext("2d").drawImage(canvas, 0, 0);
  return out;
}

function canvasBase64(canvas) {
  return new Promise((resolve) => canvas.toBlob((blob) => resolve(base64Of(blob)), "image/png"));
}
