/**
 * The Swift HTTP API client of the swift backend, over global fetch: auth v1.0 (tempauth /
 * RadosGW), v2.0 and v3 (Keystone, storage URL from the service catalog), the token kept and
 * renewed after a 401, requests retried on transient failures when their body can be replayed.
 */
import type { Readable } from "node:stream";
import type { ErrorFactory } from "./errors.js";
import { withRetry } from "./retry.js";

export interface SwiftConfig {
  storage_type?: "swift";
  user: string;
  key: string;
  auth_url: string;
  container_name: string;
  auth_version?: string;
  tenant_name?: string | null;
  region_name?: string | null;
  segment_size?: number;
  prefix?: string | null;
  user_id?: string | null;
  user_domain_id?: string | null;
  user_domain_name?: string | null;
  tenant_id?: string | null;
  project_id?: string | null;
  project_name?: string | null;
  project_domain_id?: string | null;
  project_domain_name?: string | null;
  service_type?: string | null;
  endpoint_type?: string | null;
  /** Not upstream: objects per listing request (Swift's default and maximum is 10000). */
  list_page_size?: number;
}

/** An HTTP failure from Swift; `status` drives retry and not-found handling. */
export class SwiftHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "SwiftHttpError";
  }
}

export interface RequestOptions {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  /** A Buffer or a function producing a fresh body per attempt; a bare stream is sent once. */
  body?: Buffer | Readable | (() => Readable);
  /** Statuses returned to the caller instead of raising (e.g. 404 for existence checks). */
  allow?: number[];
}

interface CatalogEndpoint {
  region?: string;
  region_id?: string;
  interface?: string;
  url?: string;
  publicURL?: string;
  internalURL?: string;
  adminURL?: string;
}

/** Speaks the Swift HTTP API for one account; authenticates lazily and again after a 401. */
export class SwiftClient {
  private token: string | null = null;
  private storageUrl: string | null = null;
  private authenticating: Promise<void> | null = null;

  constructor(
    private readonly config: SwiftConfig,
    private readonly errors: ErrorFactory,
  ) {}

  private async authenticate(): Promise<void> {
    this.authenticating ??= this.doAuthenticate().finally(() => {
      this.authenticating = null;
    });
    await this.authenticating;
  }

  private async doAuthenticate(): Promise<void> {
    const version = String(this.config.auth_version ?? "2.0");
    await withRetry(async () => {
      if (version.startsWith("1")) await this.authV1();
      else if (version.startsWith("2")) await this.authV2();
      else if (version.startsWith("3")) await this.authV3();
      else throw this.errors.error(`unsupported auth_version ${version}`);
    });
  }

  private async authFailed(res: Response): Promise<never> {
    await res.body?.cancel();
    // 401/403 are permanent (wrong credentials); 5xx is retried by the caller
    throw new SwiftHttpError(res.status, `authentication at ${this.config.auth_url} failed with HTTP ${res.status}`);
  }

  private async authV1(): Promise<void> {
    const res = await fetch(this.config.auth_url, {
      headers: {
        "X-Auth-User": this.config.user,
        "X-Auth-Key": this.config.key,
        "X-Storage-User": this.config.user,
        "X-Storage-Pass": this.config.key,
      },
    });
    if (!res.ok) await this.authFailed(res);
    await res.body?.cancel();
    const token = res.headers.get("x-auth-token") ?? res.headers.get("x-storage-token");
    const url = res.headers.get("x-storage-url");
    if (!token || !url) throw this.errors.error("auth v1.0 reply lacks X-Auth-Token or X-Storage-Url");
    this.token = token;
    this.storageUrl = url.replace(/\/+$/, "");
  }

  private async authV2(): Promise<void> {
    const c = this.config;
    const auth: Record<string, unknown> = { passwordCredentials: { username: c.user, password: c.key } };
    if (c.tenant_name) auth.tenantName = c.tenant_name;
    else if (c.tenant_id) auth.tenantId = c.tenant_id;
    const url = c.auth_url.replace(/\/+$/, "") + "/tokens";
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ auth }),
    });
    if (!res.ok) await this.authFailed(res);
    const reply = (await res.json()) as {
      access?: { token?: { id?: string }; serviceCatalog?: Array<{ type?: string; endpoints?: CatalogEndpoint[] }> };
    };
    const token = reply.access?.token?.id;
    if (!token) throw this.errors.error("auth v2.0 reply lacks access.token.id");
    this.token = token;
    this.storageUrl = this.pickEndpoint(reply.access?.serviceCatalog ?? [], "2");
  }

  private async authV3(): Promise<void> {
    const c = this.config;
    const domain = (id?: string | null, name?: string | null): Record<string, string> | undefined =>
      id ? { id } : name ? { name } : undefined;
    const user: Record<string, unknown> = { password: c.key };
    if (c.user_id) user.id = c.user_id;
    else user.name = c.user;
    const userDomain = domain(c.user_domain_id, c.user_domain_name);
    if (userDomain) user.domain = userDomain;
    const auth: Record<string, unknown> = { identity: { methods: ["password"], password: { user } } };
    const projectId = c.project_id ?? c.tenant_id;
    const projectName = c.project_name ?? c.tenant_name;
    if (projectId) auth.scope = { project: { id: projectId } };
    else if (projectName) {
      const project: Record<string, unknown> = { name: projectName };
      const projectDomain = domain(c.project_domain_id, c.project_domain_name) ?? userDomain;
      if (projectDomain) project.domain = projectDomain;
      auth.scope = { project };
    }
    let url = c.auth_url.replace(/\/+$/, "");
    if (!url.endsWith("/auth/tokens")) url += /\/v3$/.test(url) ? "/auth/tokens" : "/v3/auth/tokens";
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ auth }),
    });
    if (!res.ok) await this.authFailed(res);
    const token = res.headers.get("x-subject-token");
    const reply = (await res.json()) as {
      token?: { catalog?: Array<{ type?: string; endpoints?: CatalogEndpoint[] }> };
    };
    if (!token) throw this.errors.error("auth v3 reply lacks X-Subject-Token");
    this.token = token;
    this.storageUrl = this.pickEndpoint(reply.token?.catalog ?? [], "3");
  }

  private pickEndpoint(catalog: Array<{ type?: string; endpoints?: CatalogEndpoint[] }>, version: "2" | "3"): string {
    const serviceType = this.config.service_type ?? "object-store";
    const wanted = (this.config.endpoint_type ?? "public").replace(/URL$/, "");
    const service = catalog.find((s) => s.type === serviceType);
    if (!service) throw this.errors.error(`no ${serviceType} service in the Keystone catalog`);
    const region = this.config.region_name;
    for (const ep of service.endpoints ?? []) {
      if (region && ep.region !== region && ep.region_id !== region) continue;
      const url = version === "3" ? (ep.interface === wanted ? ep.url : undefined) : ep[`${wanted}URL` as "publicURL"];
      if (url) return url.replace(/\/+$/, "");
    }
    throw this.errors.error(
      `no ${wanted} ${serviceType} endpoint${region ? ` in region ${region}` : ""} in the Keystone catalog`,
    );
  }

  /** One request with auth; retried on transient failures when the body can be replayed. */
  async request(method: string, objectPath: string, options: RequestOptions = {}): Promise<Response> {
    const body = options.body;
    const replayable = body === undefined || Buffer.isBuffer(body) || typeof body === "function";
    let bodyUsed = false;
    const attemptOnce = async (): Promise<Response> => {
      if (!this.token) await this.authenticate();
      for (let authTry = 0; ; authTry++) {
        const url = new URL(this.storageUrl + objectPath);
        for (const [k, v] of Object.entries(options.query ?? {})) url.searchParams.set(k, v);
        let sendBody: Buffer | Readable | undefined;
        if (typeof body === "function") sendBody = body();
        else if (body !== undefined) {
          if (!Buffer.isBuffer(body) && bodyUsed)
            throw this.errors.error(`${method} ${objectPath}: stream body cannot be resent`);
          bodyUsed = true;
          sendBody = body;
        }
        const init: RequestInit & { duplex?: "half" } = {
          method,
          headers: { ...options.headers, "X-Auth-Token": this.token! },
        };
        if (sendBody !== undefined) {
          // Readable is an AsyncIterable<Uint8Array>, which undici's fetch streams (duplex: half)
          init.body = Buffer.isBuffer(sendBody) ? sendBody : (sendBody as unknown as ReadableStream);
          init.duplex = "half";
        }
        const res = await fetch(url, init);
        if (res.status === 401 && authTry === 0 && (replayable || !bodyUsed || typeof body === "function")) {
          await res.body?.cancel();
          this.token = null;
          await this.authenticate();
          continue;
        }
        if (res.ok || options.allow?.includes(res.status)) return res;
        const text = (await res.text().catch(() => "")).slice(0, 200).replace(/\s+/g, " ");
        throw new SwiftHttpError(
          res.status,
          `${method} ${decodeURIComponent(url.pathname)} failed with HTTP ${res.status} ${text}`,
        );
      }
    };
    return replayable ? withRetry(attemptOnce) : attemptOnce();
  }

  close(): void {
    this.token = null;
  }
}
