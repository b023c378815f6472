/**
 * Error classes thrown by dynllava. Every message reads "Cannot X: why", and the error carries
 * where the problem is (`where`: a file path, a tensor name, a kernel, a request field).
 *
 * - {@link CheckpointError}: a checkpoint file is missing, malformed, hostile or inconsistent.
 * - {@link TokenizerError}: a tokenizer file is missing or malformed.
 * - {@link ImageError}: an image or video cannot be decoded, is too large or empty.
 * - {@link InputError}: a request is invalid (prompt too long, id outside the vocabulary, images
 *   not matching `<image>` markers, bad option values).
 * - {@link PolicyError}: a sparsification policy cannot run on this model.
 * - {@link GpuError}: WebGPU is missing, a pipeline or buffer cannot be created, the device was lost.
 * @module
 */

/** Base class of every error thrown on purpose by dynllava. */
export class DynllavaError extends Error {
  /** Where the problem is: a file path, a tensor name, a kernel name or a request field. */
  readonly where: string;
  /**
   * An error with its message ("Cannot X: why") and where the problem is.
   *
   * @param message "Cannot X: why"
   * @param where a file path, a tensor name, a kernel name or a request field
   * @param options the standard error options (`cause`)
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { CheckpointError, DynllavaError } from "./errors.ts";
   * const err = new CheckpointError("Cannot read config: missing", "model/config.json");
   * assert.ok(err instanceof DynllavaError);
   * assert.equal(err.where, "model/config.json");
   * assert.equal(err.name, "CheckpointError");
   * ```
   */
  constructor(message: string, where: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.where = where;
  }
}

/** A checkpoint file (config, safetensors, index) is missing, malformed or inconsistent. */
export class CheckpointError extends DynllavaError {}

/** A tokenizer file (tokenizer.json or tokenizer.model) is missing or malformed. */
export class TokenizerError extends DynllavaError {}

/** An image or video input cannot be used. */
export class ImageError extends DynllavaError {}

/** A generation request is invalid. */
export class InputError extends DynllavaError {}

/** A sparsification policy cannot run on this model (for example `dynamic` without predictors). */
export class PolicyError extends DynllavaError {}

/** WebGPU failed: no adapter, a pipeline or buffer could not be created, or the device was lost. */
export class GpuError extends DynllavaError {}
