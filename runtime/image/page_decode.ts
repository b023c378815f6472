/**
 * Image decoding in a page, where the ffmpeg build that `image_decode.ts` runs in Deno is left out:
 * the browser's own decoder (`createImageBitmap`, colour management and premultiplication off) and
 * a canvas read back as 8-bit RGB, alpha dropped. PNG, GIF and BMP give the same pixels as in Deno
 * for opaque images; JPEG and lossy WebP come from the browser's decoder, whose upsampling may
 * differ from Pillow's by a few values. The caller checks the header (format, size) first.
 * @module
 */
import { ImageError } from "../core/errors.ts";

/** The part of a page's 2D canvas context used here (Deno's types do not describe it). */
interface Canvas2d {
  drawImage(image: ImageBitmap, x: number, y: number): void;
  getImageData(x: number, y: number, width: number, height: number): { data: Uint8ClampedArray };
}

/** Whether this runtime decodes images itself (a page or a worker: createImageBitmap and OffscreenCanvas). */
export function canDecodeInPage(): boolean {
  return typeof createImageBitmap === "function" && typeof OffscreenCanvas === "function";
}

/**
 * Decodes an image with the browser's decoder to [height, width, 3] RGB.
 * @example
 * ```ts ignore
 * // In a page only (Deno has no createImageBitmap for encoded bytes):
 * const png = new Uint8Array(await (await fetch("sample.png")).arrayBuffer());
 * const { width, height, data } = await decodeInPage(png, { width: 336, height: 336 });
 * ```
 */
export async function decodeInPage(
  bytes: Uint8Array,
  size: { width: number; height: number },
): Promise<{ width: number; height: number; data: Uint8Array }> {
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes as Uint8Array<ArrayBuffer>]), {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch (cause) {
    throw new ImageError(`Cannot decode image: the browser refused it (${String(cause)})`, "image", {
      cause,
    });
  }
  try {
    if (bitmap.width !== size.width || bitmap.height !== size.height) {
      throw new ImageError(
        `Cannot decode image: decoded ${bitmap.width}×${bitmap.height}, the header says ${size.width}×${size.height}`,
        "image",
      );
    }
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d") as unknown as Canvas2d;
    context.drawImage(bitmap, 0, 0);
    const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const data = new Uint8Array(bitmap.width * bitmap.height * 3);
    for (let i = 0, o = 0; i < rgba.length; i += 4, o += 3) {
      data[o] = rgba[i];
      data[o + 1] = rgba[i + 1];
      data[o + 2] = rgba[i + 2];
    }
    return { width: bitmap.width, height: bitmap.height, data };
  } finally {
    bitmap.close();
  }
}
