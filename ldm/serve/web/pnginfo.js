// A1111's PNG Info: the parameters a PNG carries, read by the server (/png-info) from a file chosen or
// dropped on the page.

import { ApiError, call } from "./api.js";
import { base64Of } from "./images.js";

const $ = (id) => document.getElementById(id);

export class PngInfo {
  constructor() {
    this.parameters = null;
    this.file = null;
  }

  async read(file) {
    $("png-info-error").hidden = true;
    this.file = file;
    let answer;
    try {
      answer = await call("POST", "/png-info", { image: await base64Of(file) });
    } catch (e) {
      $("png-info-error").textContent = e instanceof ApiError ? e.message : `${file.name}: ${e.message}`;
      $("png-info-error").hidden = false;
      return;
    }
    this.parameters = answer.parameters;
    $("png-info-text").textContent = answer.info || `${file.name} carries no parameters.`;
    $("png-info-text").hidden = false;
    $("png-info-actions").hidden = false;
    $("png-use-settings").disabled = !answer.info;
    $("png-info").scrollIntoView({ block: "nearest" });
  }
}
