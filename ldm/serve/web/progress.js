// While requests of this page are out: /progress polled for the bar, the ETA and the live preview.
// The server runs one job at a time; the others wait in its queue, and the text says how many.

import { call } from "./api.js";

const $ = (id) => document.getElementById(id);
const EVERY_MS = 250;

export class Progress {
  constructor() {
    this.pending = 0;
    this.timer = null;
  }

  started() {
    this.pending += 1;
    $("run").hidden = false;
    $("interrupt").disabled = $("skip").disabled = false;
    this.say();
    if (this.pending === 1) $("run").scrollIntoView({ block: "nearest" }); // on a phone it is below the form
    if (!this.timer) this.timer = setTimeout(() => this.poll(), 0);
  }

  finished() {
    this.pending -= 1;
    if (this.pending > 0) return this.say();
    clearTimeout(this.timer);
    this.timer = null;
    $("run").hidden = true;
    $("preview").hidden = true;
    $("progress").value = 0;
    $("interrupt").disabled = $("skip").disabled = true;
  }

  async poll() {
    try {
      this.show(await call("GET", "/progress"));
    } catch {
      // a lost connection has its banner (api.js); keep polling while requests are out
    }
    if (this.pending > 0) this.timer = setTimeout(() => this.poll(), EVERY_MS);
  }

  show(p) {
    const { state } = p;
    if (!state.job_count) return this.say();
    $("progress").value = p.progress;
    const batch = state.job_count > 1 ? `batch ${state.job_no + 1} of ${state.job_count}, ` : "";
    const steps = state.sampling_steps ? `step ${state.sampling_step} of ${state.sampling_steps}` : "starting";
    const eta = p.progress > 0.011 ? `, about ${duration(p.eta_relative)} left` : "";
    this.say(`${Math.round(p.progress * 100)}%: ${batch}${steps}${eta}`);
    if (p.current_image) {
      $("preview").src = `data:image/png;base64,${p.current_image}`;
      $("preview").hidden = false;
    }
  }

  say(running = "Waiting for the server") {
    const waiting = this.pending > 1 ? ` (${this.pending - 1} more of yours queued)` : "";
    $("progress-text").textContent = running + waiting;
  }
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}
