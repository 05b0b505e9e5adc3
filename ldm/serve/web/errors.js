// A refusal from the server, shown next to the control it concerns. The server's message names its field
// ("steps: Input should be..."), a limit's flag ("--max-steps") or the setting in words ("mask blur must...").

const FLAGS = {
  "--max-steps": "steps",
  "--max-pixels": "width",
  "--max-images": "batch_size",
  "--max-prompt-chars": "prompt",
  "--max-image-pixels": "init_images",
};
// Words of the server's messages -> the control's id; the earliest one found wins, the longer one at a tie.
const WORDS = {
  prompt: "prompt", negative_prompt: "negative_prompt", steps: "steps", cfg_scale: "cfg_scale",
  guidance: "cfg_scale", width: "width", height: "height", seed: "seed", batch_size: "batch_size",
  n_iter: "n_iter", sampler: "sampler_name", sampler_name: "sampler_name", scheduler: "scheduler",
  "schedule type": "scheduler", model: "sd_model_checkpoint", sd_model_checkpoint: "sd_model_checkpoint",
  hr_scale: "hr_scale", "hires scale": "hr_scale", hr_second_pass_steps: "hr_second_pass_steps",
  hr_upscaler: "hr_upscaler", upscaler: "hr_upscaler", "hires upscaler": "hr_upscaler",
  denoising_strength: "strength", strength: "strength", init_images: "init_images", mask: "mask",
  resize_mode: "resize_mode", "resize mode": "resize_mode", mask_blur: "mask_blur", "mask blur": "mask_blur",
  inpainting_fill: "inpainting_fill", "inpainting fill": "inpainting_fill", inpaint_full_res: "inpaint_full_res",
  inpaint_full_res_padding: "inpaint_full_res_padding", "inpaint padding": "inpaint_full_res_padding",
};

// The id of the control a message concerns, or null. `strength` is the img2img or the hires one, by mode.
export function fieldOf(message, mode) {
  const pick = (id) => (id === "strength" ? (mode === "img2img" ? "denoising_strength" : "hr_denoising_strength") : id);
  const named = /^([a-z_]+)(\[\d+\])?:/.exec(message);
  if (named && named[1] in WORDS) return pick(WORDS[named[1]]);
  for (const [flag, id] of Object.entries(FLAGS)) {
    if (message.includes(flag)) return pick(id);
  }
  let best = null;
  let at = Infinity;
  let length = 0;
  const lower = message.toLowerCase();
  for (const [word, id] of Object.entries(WORDS)) {
    const match = new RegExp(`(^|[^a-z_])${word}($|[^a-z_])`).exec(lower);
    if (match && (match.index < at || (match.index === at && word.length > length))) {
      [best, at, length] = [id, match.index, word.length];
    }
  }
  return best && pick(best);
}

// Show `message` next to control `id` (or in `fallback` when there is none).
export function showError(id, message, fallback) {
  const control = id && document.getElementById(id);
  if (!control) {
    fallback.textContent = message;
    fallback.hidden = false;
    return;
  }
  const note = document.getElementById(`${id}-error`) || document.createElement("p");
  note.id = `${id}-error`;
  note.className = "field-error";
  note.setAttribute("role", "alert");
  note.textContent = message;
  (control.closest(".field") || control).after(note);
  control.setAttribute("aria-invalid", "true");
  control.setAttribute("aria-describedby", note.id);
  control.addEventListener("input", () => clearError(id), { once: true });
}

export function clearError(id) {
  document.getElementById(`${id}-error`)?.remove();
  const control = document.getElementById(id);
  control?.removeAttribute("aria-invalid");
  control?.removeAttribute("aria-describedby");
}

export function clearErrors(form) {
  for (const note of form.querySelectorAll(".field-error[id$='-error']")) {
    if (note.id !== "form-error") clearError(note.id.slice(0, -"-error".length));
  }
  const general = document.getElementById("form-error");
  general.hidden = true;
  general.textContent = "";
}
