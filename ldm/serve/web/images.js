// Pictures as the server sends them (base64 PNG bytes) and as the page holds them (Blobs). The bytes go
// through untouched: a download is the server's file, with its `parameters` chunk.

export function blobOf(base64, type = "image/png") {
  const text = atob(base64.replace(/^data:[^,]*,/, ""));
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Blob([bytes], { type });
}

export function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

export function loaded(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot read this picture"));
    image.src = url;
  });
}
