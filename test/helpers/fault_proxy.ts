/**
 * A TCP proxy that injects network faults between a client and a real server on 127.0.0.1:
 * connection resets, stalls, slow (byte-dribbled) replies and replies cut short with a clean FIN.
 * Each new connection draws its fault from `plan` (or the fault set with `setFault`); the counts
 * say what was injected, so a test can show the faults really happened.
 */
import net from "node:net";

export type Fault =
  /** Forward as is. */
  | { kind: "none" }
  /** Destroy both sides (RST) once `afterBytes` of the request or of the reply went through. */
  | { kind: "reset"; afterBytes: number }
  /** Hold the reply for `ms` once `afterBytes` went through, then carry on. */
  | { kind: "stall"; afterBytes: number; ms: number }
  /** Send the reply in `chunk`-byte pieces, `delayMs` apart. */
  | { kind: "slow"; chunk: number; delayMs: number }
  /** Send only `afterBytes` of the reply, then close the connection cleanly (FIN). */
  | { kind: "truncate"; afterBytes: number };

export type FaultKind = Fault["kind"];

export class FaultProxy {
  readonly injected: Record<FaultKind, number> = { none: 0, reset: 0, stall: 0, slow: 0, truncate: 0 };
  private server: net.Server;
  private sockets = new Set<net.Socket>();
  private fixed: Fault | null = null;
  /** Pending stall/slow delays: stop() ends them, so a long stall does not keep the process alive. */
  private delays = new Map<NodeJS.Timeout, () => void>();
  port = 0;

  constructor(
    private readonly target: { host: string; port: number },
    private readonly plan: (connection: number) => Fault = () => ({ kind: "none" }),
  ) {
    let connections = 0;
    this.server = net.createServer((client) => this.handle(client, this.fixed ?? this.plan(connections++)));
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  /** Every new connection gets `fault` (null: back to the plan). */
  setFault(fault: Fault | null): void {
    this.fixed = fault;
  }

  /** Drops every open connection (so the next request opens a new one and draws a new fault). */
  dropAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    this.dropAll();
    for (const [timer, resolve] of this.delays) {
      clearTimeout(timer);
      resolve();
    }
    this.delays.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(client: net.Socket, fault: Fault): void {
    const upstream = net.connect(this.target.port, this.target.host);
    this.sockets.add(client);
    this.sockets.add(upstream);
    const forget = (): void => {
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on("close", forget);
    const kill = (): void => {
      client.resetAndDestroy();
      upstream.destroy();
    };
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    let up = 0;
    client.on("data", (data: Buffer) => {
      up += data.length;
      if (fault.kind === "reset" && !triggered && up > fault.afterBytes) {
        count();
        kill();
      }
    });
    client.pipe(upstream);
    upstream.on("end", () => client.end());
    client.on("end", () => upstream.end());

    let sent = 0;
    let triggered = false;
    const count = (): void => {
      if (!triggered) {
        triggered = true;
        this.injected[fault.kind]++;
      }
    };
    // Replies go through a small queue so stalls and slow sending keep their order.
    let queue: Promise<void> = Promise.resolve();
    const write = (data: Buffer): Promise<void> =>
      new Promise((resolve) => {
        if (client.destroyed) return resolve();
        if (!client.write(data)) client.once("drain", resolve);
        else resolve();
      });
    const sleep = (ms: number): Promise<void> =>
      new Promise((resolve) => {
        const timer = setTimeout(() => {
          this.delays.delete(timer);
          resolve();
        }, ms);
        this.delays.set(timer, resolve);
      });
    upstream.on("data", (data: Buffer) => {
      upstream.pause();
      queue = queue.then(async () => {
        if (client.destroyed) return;
        switch (fault.kind) {
          case "none":
            count();
            await write(data);
            break;
          case "reset":
          case "truncate":
          case "stall": {
            if (triggered || sent + data.length <= fault.afterBytes) {
              await write(data);
              break;
            }
            const head = data.subarray(0, Math.max(0, fault.afterBytes - sent));
            await write(head);
            count();
            if (fault.kind === "reset") return kill();
            if (fault.kind === "truncate") {
              client.end();
              upstream.destroy();
              return;
            }
            await sleep(fault.ms);
            await write(data.subarray(head.length));
            break;
          }
          case "slow":
            count();
            for (let off = 0; off < data.length; off += fault.chunk) {
              await write(data.subarray(off, off + fault.chunk));
              await sleep(fault.delayMs);
            }
            break;
        }
        sent += data.length;
        if (!upstream.destroyed) upstream.resume();
      });
    });
  }
}
