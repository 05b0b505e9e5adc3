// The form: its choices from the server's lists, the request body it makes, and filling it from a
// picture's parameters (/png-info's `parameters`: Prompt, Steps, Sampler, Size-1, ... as text).

import { call } from "./api.js";

const $ = (id) => document.getElementById(id);

export function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

export function setMode(name) {
  document.querySelector(`input[name=mode][value=${name}]`).checked = true;
  document.body.dataset.mode = name;
}

function options(select, entries, keep = 0) {
  const chosen = select.value;
  while (select.options.length > keep) select.remove(keep);
  for (const [value, text] of entries) select.add(new Option(text, value));
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

// The samplers, schedulers, upscalers and models the server has (each list read again on every call).
export async function loadLists() {
  const [samplers, schedulers, upscalers, latent, models, current] = await Promise.all([
    call("GET", "/samplers"),
    call("GET", "/schedulers"),
    call("GET", "/upscalers"),
    call("GET", "/latent-upscale-modes"),
    call("GET", "/sd-models"),
    call("GET", "/options"),
  ]);
  options($("sampler_name"), samplers.map((s) => [s.name, s.name]), 1);
  options($("scheduler"), schedulers.filter((s) => s.name !== "automatic").map((s) => [s.name, s.label]), 1);
  const names = [...latent.map((u) => u.name), ...upscalers.map((u) => u.name).filter((n) => n !== "None")];
  options($("hr_upscaler"), names.map((n) => [n, n]));
  showModels(models, current.sd_model_checkpoint);
}

export function showModels(models, current) {
  const select = $("sd_model_checkpoint");
  options(select, models.map((m) => [m.title, m.title]));
  const named = models.find((m) => m.title === current || m.filename === current.split(" [")[0]);
  if (named) select.value = named.title;
  select.dataset.names = JSON.stringify(models.map((m) => [m.model_name, m.title]));
}

function number(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

// The body of POST /txt2img (without the picture and mask of img2img: the caller adds them).
export function body() {
  const seed = number("seed");
  const request = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    sampler_name: $("sampler_name").value || null,
    scheduler: $("scheduler").value || null,
    steps: number("steps"),
    cfg_scale: number("cfg_scale"),
    width: number("width"), // null: the model's default (img2img: the picture's size)
    height: number("height"),
    seed: seed === null ? -1 : seed,
    batch_size: number("batch_size") ?? 1,
    n_iter: number("n_iter") ?? 1,
    send_images: true,
    save_images: false,
  };
  if (mode() === "img2img") {
    Object.assign(request, {
      denoising_strength: number("denoising_strength"),
      resize_mode: Number($("resize_mode").value),
      mask_blur: number("mask_blur"),
      inpainting_fill: Number($("inpainting_fill").value),
      inpaint_full_res: $("inpaint_full_res").checked,
      inpaint_full_res_padding: number("inpaint_full_res_padding"),
      include_init_images: false,
    });
  } else if ($("enable_hr").checked) {
    Object.assign(request, {
      enable_hr: true,
      hr_scale: number("hr_scale"),
      hr_second_pass_steps: number("hr_second_pass_steps"),
      denoising_strength: number("hr_denoising_strength"),
      hr_upscaler: $("hr_upscaler").value || null,
    });
  }
  return request;
}

function choose(id, value) {
  const select = $(id);
  const wanted = String(value).toLowerCase();
  const option = [...select.options].find((o) => o.value.toLowerCase() === wanted || o.text.toLowerCase() === wanted);
  if (option) select.value = option.value;
}

// Fill the form from a picture's parameters; what they do not mention is left as it is.
export function fill(p) {
  const set = (id, key) => {
    if (p[key] !== undefined) $(id).value = p[key];
  };
  set("prompt", "Prompt");
  set("negative_prompt", "Negative prompt");
  set("steps", "Steps");
  set("cfg_scale", "CFG scale");
  set("seed", "Seed");
  set("width", "Size-1");
  set("height", "Size-2");
  if (p.Sampler) choose("sampler_name", p.Sampler.replace(/ Karras$/, ""));
  $("scheduler").value = p["Schedule type"] === "Karras" || / Karras$/.test(p.Sampler || "") ? "karras" : "";
  if (p.Model) {
    const names = new Map(JSON.parse($("sd_model_checkpoint").dataset.names || "[]"));
    if (names.has(p.Model) && $("sd_model_checkpoint").value !== names.get(p.Model)) {
      $("sd_model_checkpoint").value = names.get(p.Model);
      $("sd_model_checkpoint").dispatchEvent(new Event("change"));
    }
  }
  const hires = p["Hires upscale"] !== undefined || p["Hires upscaler"] !== undefined;
  $("enable_hr").checked = hires;
  if (hires) {
    set("hr_scale", "Hires upscale");
    $("hr_second_pass_steps").value = p["Hires steps"] ?? 0;
    set("hr_denoising_strength", "Denoising strength");
    if (p["Hires upscaler"]) choose("hr_upscaler", p["Hires upscaler"]);
    $("hires").open = true;
  } else {
    set("denoising_strength", "Denoising strength");
  }
  if (p["Mask blur"] !== undefined) set("mask_blur", "Mask blur");
}
