// The page: the form sends txt2img / img2img requests (each click one more, queued by the server), the
// results go to the gallery, and refusals appear next to the control they concern.

import { ApiError, ConnectionLost, call, onReconnect } from "./api.js";
import { clearError, clearErrors, fieldOf, showError } from "./errors.js";
import { body, fill, loadLists, mode, setMode, showModels } from "./form.js";
import { Gallery } from "./gallery.js";
import { MaskEditor } from "./mask.js";
import { PngInfo } from "./pnginfo.js";
import { Progress } from "./progress.js";

const $ = (id) => document.getElementById(id);
const form = $("form");
const general = $("form-error"); // a refusal that names no control
const progress = new Progress();
const gallery = new Gallery();
const editor = new MaskEditor();
const pngInfo = new PngInfo();
let lastSeed = null;
let listed = false;

async function start() {
  setMode(mode());
  try {
    await loadLists();
    listed = true;
  } catch (e) {
    // a lost connection has its banner, and the lists are read again once it is back
    if (!(e instanceof ConnectionLost)) showError(null, `Cannot read the server's lists: ${e.message}`, general);
  }
}
onReconnect(() => listed || start());

async function generate() {
  clearErrors(form);
  const kind = mode();
  const request = body();
  if (kind === "img2img") {
    if (!editor.ready) {
      showError("init_images", "Choose a picture first: upload one, drop one here, or send one from the gallery.");
      return;
    }
    request.init_images = [await editor.picture()];
    if (editor.painted()) request.mask = await editor.maskPicture();
  }
  progress.started();
  try {
    const answer = await call("POST", `/${kind}`, request);
    const info = JSON.parse(answer.info);
    gallery.add(answer.images, info);
    lastSeed = info.seed;
    $("seed-reuse").disabled = false;
  } catch (e) {
    if (e instanceof ApiError) {
      const client = [400, 404, 413, 422].includes(e.status); // the request's fault: its field is named
      showError(client ? fieldOf(e.message, kind) : null, e.message, general);
    } else if (e instanceof ConnectionLost) {
      const lost = "The connection was lost before the picture came back; generate again once it is back.";
      showError(null, lost, general);
    } else throw e;
  } finally {
    progress.finished();
  }
}

async function switchModel() {
  const select = $("sd_model_checkpoint");
  clearError(select.id);
  select.disabled = true;
  try {
    await call("POST", "/options", { sd_model_checkpoint: select.value });
    const current = await call("GET", "/options");
    showModels(await call("GET", "/sd-models"), current.sd_model_checkpoint);
  } catch (e) {
    showError(select.id, e.message, general);
  } finally {
    select.disabled = false;
  }
}

async function toImg2img(blob) {
  await editor.load(blob);
  setMode("img2img");
  $("width").value = $("height").value = ""; // the picture's own size
  clearError("init_images");
  $("img2img").scrollIntoView({ block: "nearest" });
}

async function useSettings(base64, errorAt) {
  try {
    fill((await call("POST", "/png-info", { image: base64 })).parameters);
    $("prompt").focus();
  } catch (e) {
    errorAt.textContent = e.message;
    errorAt.hidden = false;
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    generate();
  }
});
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", () => setMode(mode()));
}
$("sd_model_checkpoint").addEventListener("change", switchModel);
$("interrupt").addEventListener("click", () => call("POST", "/interrupt").catch(() => {}));
$("skip").addEventListener("click", () => call("POST", "/skip").catch(() => {}));
$("seed-random").addEventListener("click", () => ($("seed").value = "-1"));
$("seed-reuse").addEventListener("click", () => lastSeed !== null && ($("seed").value = String(lastSeed)));
$("init_images").addEventListener("change", (e) => e.target.files[0] && toImg2img(e.target.files[0]));
$("mask-clear").addEventListener("click", () => editor.clear());
$("mask-invert").addEventListener("click", () => editor.invert());
for (const button of document.querySelectorAll("[data-extend]")) {
  button.addEventListener("click", () => {
    if (!editor.ready) return showError("init_images", "Choose a picture to extend first.");
    editor.extend(button.dataset.extend, Math.max(8, Math.round(Number($("extend_by").value) / 8) * 8));
  });
}
$("use-settings").addEventListener("click", () => useSettings(gallery.selected.base64, $("selected-error")));
$("send-to-img2img").addEventListener("click", () => toImg2img(gallery.selected.blob));
$("png-file").addEventListener("change", (e) => e.target.files[0] && pngInfo.read(e.target.files[0]));
$("png-use-settings").addEventListener("click", () => pngInfo.parameters && fill(pngInfo.parameters));
$("png-send-to-img2img").addEventListener("click", () => pngInfo.file && toImg2img(pngInfo.file));

// A picture dropped on the img2img area starts img2img; dropped anywhere else, its parameters are read.
document.addEventListener("dragover", (e) => {
  e.preventDefault();
  $("drop-hint").hidden = false;
});
document.addEventListener("dragleave", (e) => e.relatedTarget === null && ($("drop-hint").hidden = true));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop-hint").hidden = true;
  const file = e.dataTransfer?.files[0];
  if (!file) return;
  if (e.target instanceof Element && e.target.closest("#img2img")) toImg2img(file);
  else pngInfo.read(file);
});

start();
