/**
 * `object_storage.proxy_info` → Node agents. One place builds them so s3, azure and google route
 * the same way: socks5 through socks-proxy-agent (names resolved by the proxy, as rohmu's
 * `rdns=True`), http through http-proxy-agent for plain-http endpoints and https-proxy-agent
 * (CONNECT) for https ones.
 */
import type { Agent as HttpAgent } from "node:http";
import type { Agent as HttpsAgent, AgentOptions as HttpsAgentOptions } from "node:https";

/** `object_storage.proxy_info` (config.md §7); `type` defaults to http. */
export interface ProxyInfo {
  type?: "http" | "socks5" | "socks5h";
  host: string;
  port: number;
  user?: string;
  pass?: string;
}

export interface ProxyAgents {
  /** For `http://` endpoints. */
  http: HttpAgent;
  /** For `https://` endpoints. */
  https: HttpsAgent;
}

/** `scheme://[user:pass@]host:port`, credentials URL-encoded. */
export function proxyUrl(
  proxy: ProxyInfo,
  scheme: string = proxy.type === "socks5" || proxy.type === "socks5h" ? "socks5h" : "http",
): string {
  const auth =
    proxy.user !== undefined && proxy.user !== null && proxy.user !== ""
      ? `${encodeURIComponent(proxy.user)}${proxy.pass ? `:${encodeURIComponent(proxy.pass)}` : ""}@`
      : "";
  const host = proxy.host.includes(":") && !proxy.host.startsWith("[") ? `[${proxy.host}]` : proxy.host;
  return `${scheme}://${auth}${host}:${Number(proxy.port)}`;
}

/** Agents that send every request through the proxy; `tls` applies to the endpoint's TLS. */
export async function createProxyAgents(proxy: ProxyInfo, tls: HttpsAgentOptions = {}): Promise<ProxyAgents> {
  const options = { keepAlive: true, maxSockets: 50, ...tls };
  if (proxy.type === "socks5" || proxy.type === "socks5h") {
    const { SocksProxyAgent } = await import("socks-proxy-agent");
    // agent-base picks TLS per request (secureEndpoint), so one agent serves both schemes.
    const agent = new SocksProxyAgent(proxyUrl(proxy), options);
    return { http: agent as unknown as HttpAgent, https: agent as unknown as HttpsAgent };
  }
  if (proxy.type !== undefined && proxy.type !== "http")
    throw new Error(`proxy_info.type must be "socks5" or "http", not ${String(proxy.type)}`);
  const [{ HttpProxyAgent }, { HttpsProxyAgent }] = await Promise.all([
    import("http-proxy-agent"),
    import("https-proxy-agent"),
  ]);
  const url = proxyUrl(proxy);
  return {
    http: new HttpProxyAgent(url, { keepAlive: true, maxSockets: 50 }) as unknown as HttpAgent,
    https: new HttpsProxyAgent(url, options) as unknown as HttpsAgent,
  };
}
