/** Transports the gateway serves. */
export declare const TRANSPORTS: readonly ['ws', 'sse'];

/** A row as the gateway sends it (`to_jsonb` of the table's row). */
export type Row = Record<string, unknown>;

export interface ViewOptions {
  /** The gateway's origin, e.g. `http://127.0.0.1:3001`. */
  url: string;
  /** The tracked table (`orders`, or `schema.table`); all tracked tables when omitted. */
  table?: string;
  /** Stream filters, ANDed: `status=eq.pending`, `customer_name=in.(Ada,Bob)`. */
  filter?: string | string[];
  /** `ws` (default) or `sse`. */
  transport?: 'ws' | 'sse';
  /** A JWT or static token, sent as `access_token`. */
  token?: string;
  /** The column rows are keyed by in `rows` (default `id`). */
  key?: string;
  /** First reconnect delay cap in ms (doubles per failure up to `maxDelay`). */
  minDelay?: number;
  maxDelay?: number;
  /** A WebSocket constructor where there is no global one (the `ws` package in Node 20). */
  WebSocket?: unknown;
  /** A `fetch` to read Server-Sent Events with (the global one by default). */
  fetch?: typeof fetch;
}

export type ViewStatus = 'connecting' | 'live' | 'reconnecting' | 'closed';

export interface ViewEventMap {
  snapshot: CustomEvent<{ rows: Map<unknown, Row> }>;
  enter: CustomEvent<{ row: Row }>;
  update: CustomEvent<{ row: Row; previous: Row | undefined }>;
  leave: CustomEvent<{ row: Row }>;
  reset: CustomEvent<{ reason: string; table?: string }>;
  status: CustomEvent<{ status: ViewStatus; failures: number; delay?: number }>;
}

/** A live view: `rows` stays equal to the rows of `table` that pass `filter`. */
export declare class View extends EventTarget {
  constructor(options: ViewOptions);
  readonly options: Required<Pick<ViewOptions, 'transport' | 'key'>> & ViewOptions;
  /** The rows in the view, by `key`. */
  rows: Map<unknown, Row>;
  /** The last position applied (a decimal string), null until the first `ready`. */
  position: string | null;
  status: ViewStatus;
  /** Consecutive failed connections. */
  failures: number;
  /** Stops the view for good. */
  close(): void;
  addEventListener<K extends keyof ViewEventMap>(
    type: K,
    listener: (event: ViewEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** Opens a live view. */
export declare function view(options: ViewOptions): View;

/** The query string of a stream (`snapshot=true` when `position` is null, else `since`). */
export declare function streamQuery(
  options: Pick<ViewOptions, 'table' | 'filter' | 'token'>,
  position: string | null,
): string;

/** Full-jitter backoff delay in ms. */
export declare function backoffDelay(failures: number, minDelay?: number, maxDelay?: number, random?: () => number): number;
