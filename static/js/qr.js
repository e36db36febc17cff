// @ts-check
/** Draws a QR code of a text (the room link) on a canvas. Uses the vendored qrcode-generator. */
// @ts-ignore -- vendored file without type declarations
import qrcode from '/static/vendor/qrcode.mjs';

/**
 * @param {HTMLCanvasElement} canvas
 * @param {string} text ASCII (a URL)
 */
export function drawQr(canvas, text) {
  const qr = qrcode(0, 'M');
  qr.addData(text, 'Byte');
  qr.make();
  const n = qr.getModuleCount();
  const quiet = 4;
  const scale = Math.max(2, Math.floor(264 / (n + 2 * quiet)));
  const size = (n + 2 * quiet) * scale;
  canvas.width = size;
  canvas.height = size;
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext('2d'));
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, size, size);
  ctx.fillStyle = '#0e1014';
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      if (qr.isDark(r, c)) ctx.fillRect((c + quiet) * scale, (r + quiet) * scale, scale, scale);
    }
  }
  return n;
}
