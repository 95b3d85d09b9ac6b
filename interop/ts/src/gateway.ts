// Gateway runs the real imagerecordsd binary in --simulate mode on a free
// loopback port for the interop tests, the way interop/node does.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

const STARTUP_TIMEOUT_MS = 30_000;
// The gateway drains for up to --shutdown-grace (15s by default) on SIGTERM.
const EXIT_TIMEOUT_MS = 30_000;

/** What the gateway's "simulator started" log line tells. */
export interface Simulator {
  region: string;
  desktop_ids: string[];
}

/** A running gateway and what its log told about it. */
export interface Gateway {
  /** host:port it serves Connect, gRPC and gRPC-Web on. */
  addr: string;
  simulator: Simulator;
  /** The last lines of its stderr, for failure messages. */
  log(): string;
  /** Sends SIGTERM and resolves with the exit code once it has exited. */
  stop(): Promise<number | null>;
}

/**
 * startGateway spawns `binary --simulate --listen 127.0.0.1:0` (plus args)
 * and resolves once its JSON log on stderr has told both the simulated
 * desktops and the address it serves on.
 */
export function startGateway(binary: string, args: string[] = []): Promise<Gateway> {
  // IMAGERECORDS_<FLAG> variables set the gateway's flags; keep the caller's
  // (e.g. IMAGERECORDS_LOG_LEVEL=error) out of this run.
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("IMAGERECORDS_")));
  const child = spawn(binary, ["--simulate", "--listen", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "ignore", "pipe"], // stdout is a human banner
    env,
  });
  const lines: string[] = [];
  const log = () => `--- ${binary} stderr ---\n${lines.join("\n")}`;
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("close", (code, signal) => resolve({ code, signal })),
  );
  const running = () => child.exitCode === null && child.signalCode === null;

  const stop = async (): Promise<number | null> => {
    if (running()) child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`no exit within ${EXIT_TIMEOUT_MS} ms of SIGTERM\n${log()}`));
      }, EXIT_TIMEOUT_MS);
    });
    try {
      const { code, signal } = await Promise.race([closed, timeout]);
      if (signal !== null) throw new Error(`killed by ${signal}\n${log()}`);
      return code;
    } finally {
      clearTimeout(timer);
    }
  };

  return new Promise((resolve, reject) => {
    let simulator: Simulator | undefined;
    let addr: string | undefined;
    let settled = false;
    const fail = (message: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (running()) child.kill("SIGKILL");
      reject(new Error(`${message}\n${log()}`));
    };
    const timer = setTimeout(
      () => fail(`no "simulator started" and "serving" log lines within ${STARTUP_TIMEOUT_MS} ms`),
      STARTUP_TIMEOUT_MS,
    );
    child.once("error", (err) => fail(`cannot run ${binary}: ${err.message}`));
    child.once("exit", (code, signal) => fail(`${binary} exited before serving (code ${code}, signal ${signal})`));

    createInterface({ input: child.stderr, crlfDelay: Infinity }).on("line", (line) => {
      lines.push(line);
      if (lines.length > 500) lines.shift();
      let entry: { msg?: string; addr?: string } & Partial<Simulator>;
      try {
        entry = JSON.parse(line);
      } catch {
        return; // not a log object: kept for diagnostics only
      }
      if (entry.msg === "simulator started") simulator = { region: entry.region ?? "", desktop_ids: entry.desktop_ids ?? [] };
      if (entry.msg === "serving") addr = entry.addr;
      if (simulator && addr && !settled) {
        settled = true;
        clearTimeout(timer);
        resolve({ addr, simulator, log, stop });
      }
    });
  });
}
