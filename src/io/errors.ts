/**
 * Typed errors of the loading layer: each names the URL or file and says what to do next. A caller
 * tells them apart with instanceof (all are exported from the package).
 */
import { PdvmError } from '../errors.js';

/** A model file could not be downloaded; `url` is the address that failed. */
export class DownloadError extends PdvmError {
  constructor(readonly url: string, message: string) {
    super(message);
  }
}

/** The server answered with an error status (404, 500, 401...). */
export class HttpStatusError extends DownloadError {
  constructor(url: string, readonly status: number, statusText: string) {
    super(url, `${url}: the server answered ${status}${statusText ? ` ${statusText}` : ''}; ${statusHint(status)}`);
  }
}

function statusHint(status: number): string {
  if (status === 401 || status === 403) return 'the model may be gated or private: pass headers: { Authorization: "Bearer <token>" } (or a fetch that adds them) to loadModel';
  if (status === 404 || status === 410) return 'check the URL (a Hugging Face folder URL ends with "/", e.g. .../resolve/main/)';
  if (status === 416) return 'the server refused the byte range; the file may have changed while loading: load it again';
  if (status === 429) return 'the server is rate-limiting: wait and try again';
  if (status >= 500) return 'the server failed: try again later, or download the file and load it from disk';
  return 'check the URL and the request headers';
}

/** fetch itself failed: the host is unreachable, or a browser blocked a cross-origin request (CORS). */
export class NetworkError extends DownloadError {
  constructor(url: string, cause: string) {
    super(
      url,
      `${url}: the request failed (${cause}): the server is unreachable, or, in a browser, it does not allow requests from this page's origin (CORS); ` +
        'check the address and your connection, or serve the model from the page\'s own origin (or with Access-Control-Allow-Origin)',
    );
  }
}

/** The connection ended before the whole file (or range) arrived. */
export class IncompleteDownloadError extends DownloadError {
  constructor(url: string, readonly receivedBytes: number, readonly expectedBytes: number) {
    super(url, `${url}: the download ended after ${receivedBytes} of ${expectedBytes} bytes; the connection was cut: load the model again`);
  }
}

/** The browser's storage refused to keep a downloaded model (quota exceeded); nothing was kept. */
export class StorageQuotaError extends PdvmError {
  constructor(readonly url: string, readonly bytes: number, detail: string) {
    super(
      `${url}: keeping this ${(bytes / 1e6).toFixed(1)} MB model in the browser's storage failed (${detail}); ` +
        'free space with deleteCachedModel() (listCachedModels() lists what is kept), or load with cache: false',
    );
  }
}
