/**
 * A physical replication client over `pg` (dependencies.md Q9): the replication commands the
 * walreceiver and the pg_receivexlog version check need (IDENTIFY_SYSTEM, TIMELINE_HISTORY,
 * CREATE_REPLICATION_SLOT, READ_REPLICATION_SLOT, SHOW) through ordinary queries, and
 * START_REPLICATION through a custom Submittable that sees the CopyBoth stream.
 *
 * pg's Client routes CopyData of the active query to the Submittable's `handleCopyData`; the
 * server's CopyDone (end of a historic timeline) is only emitted on the Connection, so the stream
 * listens there while it is active. Payload buffers from pg-protocol are views into the parser's
 * reusable buffer: consumers must copy the bytes before the callback returns.
 */
import pg from "pg";
import type { ConnectionInfo } from "../config/index.js";
import { formatLsn, parseLsn } from "./lsn.js";

/** Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01). */
const PG_EPOCH_OFFSET_US = 946_684_800_000_000n;

export class ReplicationError extends Error {
  /** SQLSTATE when the server sent one. */
  readonly code: string | undefined;
  constructor(message: string, code?: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ReplicationError";
    this.code = code;
  }
}

export interface IdentifySystem {
  systemId: string;
  timeline: number;
  xlogpos: bigint;
  dbname: string | null;
}

export interface SlotInfo {
  slotType: string | null;
  restartLsn: bigint | null;
  restartTli: number | null;
}

/** Where the server says the next timeline starts after it ended a historic one. */
export interface TimelineEnd {
  nextTimeline: number;
  nextStartLsn: bigint;
}

export interface XLogData {
  dataStart: bigint;
  walEnd: bigint;
  /** A view valid only during the callback: copy what you keep. */
  payload: Buffer;
}

export interface ReplicationHandlers {
  onXLogData(msg: XLogData): void;
  onKeepalive?(walEnd: bigint, replyRequested: boolean): void;
}

/** pg.Client options from libpq keywords; unknown keywords are dropped (pg has no equivalent). */
export function pgClientConfig(info: ConnectionInfo): pg.ClientConfig {
  const config: pg.ClientConfig & { replication?: string } = {};
  if (info.host) config.host = info.host;
  else if (info.hostaddr) config.host = info.hostaddr;
  if (info.port) config.port = Number(info.port);
  if (info.user) config.user = info.user;
  if (info.password !== undefined) config.password = info.password;
  if (info.dbname) config.database = info.dbname;
  if (info.application_name) config.application_name = info.application_name;
  // libpq waits forever without connect_timeout; a daemon should not.
  config.connectionTimeoutMillis = (info.connect_timeout ? Number(info.connect_timeout) : 30) * 1000;
  const sslmode = info.sslmode;
  if (sslmode === "require" || sslmode === "prefer" || sslmode === "allow") config.ssl = { rejectUnauthorized: false };
  else if (sslmode === "verify-ca" || sslmode === "verify-full") config.ssl = true;
  // Physical replication: pg sends `replication` as a startup parameter.
  config.replication = "true";
  return config;
}

function pgErrorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

function statusUpdate(write: bigint, flush: bigint, apply: bigint, replyRequested: boolean): Buffer {
  const buf = Buffer.alloc(34);
  buf.write("r", 0, "latin1");
  buf.writeBigUInt64BE(write, 1);
  buf.writeBigUInt64BE(flush, 9);
  buf.writeBigUInt64BE(apply, 17);
  buf.writeBigInt64BE(BigInt(Date.now()) * 1000n - PG_EPOCH_OFFSET_US, 25);
  buf.writeUInt8(replyRequested ? 1 : 0, 33);
  return buf;
}

/** Minimal view of pg's internal Connection that the Submittable uses. */
interface PgConnection {
  query(text: string): void;
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
  on(event: string, listener: (...args: unknown[]) => void): void;
  removeListener(event: string, listener: (...args: unknown[]) => void): void;
  stream: { pause(): void; resume(): void };
}

interface DataRowMessage {
  fields: Array<string | null>;
}

/**
 * START_REPLICATION as a pg Submittable. `done` resolves when the server ends the stream: with
 * the next timeline when it ended a historic timeline, or with null after our own `stop()`.
 */
export class ReplicationStream implements pg.Submittable {
  readonly done: Promise<TimelineEnd | null>;
  private resolveDone!: (value: TimelineEnd | null) => void;
  private rejectDone!: (err: Error) => void;
  private connection: PgConnection | null = null;
  private copyDoneSent = false;
  private rows: Array<Array<string | null>> = [];
  private error: Error | null = null;
  private onServerCopyDone = (): void => {
    // The server finished a historic timeline: answer CopyDone, then it sends the next TLI.
    if (!this.copyDoneSent && this.connection) {
      this.copyDoneSent = true;
      this.connection.endCopyFrom();
    }
  };

  constructor(
    readonly text: string,
    private readonly handlers: ReplicationHandlers,
  ) {
    this.done = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // A stream nobody awaits must not crash the process with an unhandled rejection.
    this.done.catch(() => undefined);
  }

  submit(connection: unknown): void {
    this.connection = connection as PgConnection;
    this.connection.on("copyDone", this.onServerCopyDone);
    this.connection.query(this.text);
  }

  handleCopyData(msg: { chunk: Buffer }): void {
    const chunk = msg.chunk;
    const kind = chunk[0];
    if (kind === 0x77 /* 'w' */) {
      this.handlers.onXLogData({
        dataStart: chunk.readBigUInt64BE(1),
        walEnd: chunk.readBigUInt64BE(9),
        payload: chunk.subarray(25),
      });
    } else if (kind === 0x6b /* 'k' */) {
      this.handlers.onKeepalive?.(chunk.readBigUInt64BE(1), chunk[17] === 1);
    }
  }

  handleRowDescription(): void {}

  handleDataRow(msg: DataRowMessage): void {
    this.rows.push(msg.fields);
  }

  handleCommandComplete(): void {}

  handleEmptyQuery(): void {}

  handleError(err: Error): void {
    this.error = err;
    this.finish();
  }

  handleReadyForQuery(): void {
    this.finish();
  }

  private finish(): void {
    this.connection?.removeListener("copyDone", this.onServerCopyDone);
    if (this.error) {
      this.rejectDone(
        new ReplicationError(`Replication stream failed: ${this.error.message}`, pgErrorCode(this.error), {
          cause: this.error,
        }),
      );
      return;
    }
    const row = this.rows[0];
    if (row && row[0] !== null && row[1] !== null) {
      this.resolveDone({ nextTimeline: Number(row[0]), nextStartLsn: parseLsn(String(row[1])) });
    } else {
      this.resolveDone(null);
    }
  }

  /** Standby status update ('r'). */
  sendStatus(write: bigint, flush: bigint, apply: bigint, replyRequested = false): void {
    if (!this.connection || this.copyDoneSent) return;
    this.connection.sendCopyFromChunk(statusUpdate(write, flush, apply, replyRequested));
  }

  /** Ends streaming from our side (CopyDone); `done` then resolves with null. */
  stop(): void {
    if (!this.connection || this.copyDoneSent) return;
    this.copyDoneSent = true;
    this.connection.endCopyFrom();
  }

  /** Stop reading from the socket (bounded memory while uploads catch up). */
  pause(): void {
    this.connection?.stream.pause();
  }

  resume(): void {
    this.connection?.stream.resume();
  }
}

/** One replication connection (`replication=true`). */
export class ReplicationConnection {
  private constructor(
    private readonly client: pg.Client,
    /** server_version_num, e.g. 150004. */
    readonly serverVersion: number,
  ) {}

  /** Connects; connection errors keep the server's message (callers classify them for alerts). */
  static async connect(info: ConnectionInfo): Promise<ReplicationConnection> {
    const client = new pg.Client(pgClientConfig(info));
    // An error after connect (server gone) is reported through the active query; without a
    // listener the 'error' event would be thrown.
    client.on("error", () => undefined);
    try {
      await client.connect();
    } catch (err) {
      await client.end().catch(() => undefined);
      throw new ReplicationError((err as Error).message, pgErrorCode(err), { cause: err });
    }
    let version = 0;
    try {
      const res = await client.query<string[]>({ text: "SHOW server_version_num", rowMode: "array" });
      version = Number(res.rows[0]?.[0] ?? 0);
    } catch {
      // Replication connections accept SHOW only from PG 10; 0 is reported as unsupported.
    }
    return new ReplicationConnection(client, Number.isFinite(version) ? version : 0);
  }

  private async command(text: string): Promise<Array<unknown[]>> {
    try {
      const res = await this.client.query<unknown[]>({ text, rowMode: "array" });
      return res.rows;
    } catch (err) {
      throw new ReplicationError(`${text.split(" ")[0]} failed: ${(err as Error).message}`, pgErrorCode(err), {
        cause: err,
      });
    }
  }

  async identifySystem(): Promise<IdentifySystem> {
    const [row] = await this.command("IDENTIFY_SYSTEM");
    if (!row) throw new ReplicationError("IDENTIFY_SYSTEM returned no row");
    return {
      systemId: String(row[0]),
      timeline: Number(row[1]),
      xlogpos: parseLsn(String(row[2])),
      dbname: row[3] === null || row[3] === undefined ? null : String(row[3]),
    };
  }

  /** The history file of `timeline`: its name and raw bytes (bytea before PG 14, text after). */
  async timelineHistory(timeline: number): Promise<{ filename: string; content: Buffer }> {
    const [row] = await this.command(`TIMELINE_HISTORY ${timeline}`);
    if (!row) throw new ReplicationError(`TIMELINE_HISTORY ${timeline} returned no row`);
    const content = row[1];
    return {
      filename: String(row[0]),
      content: Buffer.isBuffer(content) ? content : Buffer.from(String(content), "utf8"),
    };
  }

  /**
   * Creates a physical slot that reserves WAL right away; false when it already exists. Slot
   * names are identifiers PostgreSQL restricts to [a-z0-9_], so they need no quoting.
   */
  async createPhysicalSlot(slot: string): Promise<boolean> {
    if (!/^[a-z0-9_]+$/.test(slot)) throw new ReplicationError(`Invalid replication slot name ${JSON.stringify(slot)}`);
    // Look first where the server can tell (PG ≥ 15): a failed CREATE puts an ERROR into the
    // server's log at every daemon start.
    if ((await this.readSlot(slot))?.slotType) return false;
    try {
      await this.command(`CREATE_REPLICATION_SLOT ${slot} PHYSICAL RESERVE_WAL`);
      return true;
    } catch (err) {
      if ((err as ReplicationError).code === "42710") return false; // duplicate_object
      throw err;
    }
  }

  /** READ_REPLICATION_SLOT (PG ≥ 15); null when the server is older or the slot is missing. */
  async readSlot(slot: string): Promise<SlotInfo | null> {
    if (this.serverVersion < 150000 || !/^[a-z0-9_]+$/.test(slot)) return null;
    const [row] = await this.command(`READ_REPLICATION_SLOT ${slot}`);
    if (!row || row[0] === null) return null;
    return {
      slotType: row[0] === null ? null : String(row[0]),
      restartLsn: row[1] === null ? null : parseLsn(String(row[1])),
      restartTli: row[2] === null ? null : Number(row[2]),
    };
  }

  startReplication(
    options: { slot?: string | undefined; startLsn: bigint; timeline: number },
    handlers: ReplicationHandlers,
  ): ReplicationStream {
    const slot = options.slot ? `SLOT ${options.slot} ` : "";
    const stream = new ReplicationStream(
      `START_REPLICATION ${slot}PHYSICAL ${formatLsn(options.startLsn)} TIMELINE ${options.timeline}`,
      handlers,
    );
    void this.client.query(stream);
    return stream;
  }

  async close(): Promise<void> {
    await this.client.end().catch(() => undefined);
  }
}

/** Alert names of operations.md §8 for a failed connection (`authentication_error` or `configuration_error`). */
export function connectionFailureAlert(message: string): "authentication_error" | "configuration_error" {
  return message.includes("password authentication") || message.includes("authentication failed")
    ? "authentication_error"
    : "configuration_error";
}
