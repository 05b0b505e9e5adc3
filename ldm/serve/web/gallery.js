// The pictures made since the page opened, newest first: each keeps the server's PNG bytes (downloaded as
// they are) and its infotext, shown on hover and, for the selected one, below the gallery.

import { blobOf } from "./images.js";

const $ = (id) => document.getElementById(id);

export class Gallery {
  constructor() {
    this.items = [];
    this.selected = null;
  }

  // `images`: base64 PNGs of one answer; `info`: its parsed `info` JSON (infotexts[i], all_seeds[i]).
  add(images, info) {
    const made = images.slice(0, info.infotexts.length).map((base64, i) => {
      const blob = blobOf(base64);
      const seed = info.all_seeds[i] ?? info.seed;
      return { base64, blob, url: URL.createObjectURL(blob), infotext: info.infotexts[i], seed };
    });
    for (const item of made) this.show(item);
    if (made.length) this.select(made[0]);
    return made;
  }

  show(item) {
    this.items.unshift(item);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    button.title = item.infotext;
    const number = this.items.length;
    button.setAttribute("aria-label", `Picture ${number}, seed ${item.seed}: show its parameters`);
    const image = document.createElement("img");
    image.src = item.url;
    image.alt = "";
    button.append(image);
    button.addEventListener("click", () => this.select(item));
    const entry = document.createElement("li");
    entry.append(button);
    item.entry = entry;
    $("gallery").prepend(entry);
    $("gallery-empty").hidden = true;
  }

  select(item) {
    this.selected = item;
    for (const li of $("gallery").children) li.classList.toggle("chosen", li === item.entry);
    $("selected").hidden = false;
    $("selected-image").src = item.url;
    $("selected-image").alt = `The selected picture, seed ${item.seed}`;
    $("selected-info").textContent = item.infotext;
    $("download").href = item.url;
    $("download").download = `ldm-${item.seed}.png`;
    $("selected-error").hidden = true;
  }
}
