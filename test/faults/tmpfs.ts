/** A small tmpfs for full-disk tests; mounting needs root (or CAP_SYS_ADMIN), otherwise a skip reason. */
import { execFile } from "node:child_process";
import { chmod, rm, statfs, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { makeTempDir } from "../helpers/pgcluster.js";

const run = promisify(execFile);

export interface Tmpfs {
  dir: string;
  /** Bytes free for an unprivileged writer. */
  free(): Promise<number>;
  /** Writes a ballast file so that about `leaveFree` bytes stay free. */
  fill(leaveFree: number): Promise<void>;
  /** Removes the ballast: space returns. */
  release(): Promise<void>;
  unmount(): Promise<void>;
}

export async function mountTmpfs(sizeMiB: number): Promise<Tmpfs | { skip: string }> {
  const dir = await makeTempDir("pghoard-tmpfs");
  try {
    await run("mount", ["-t", "tmpfs", "-o", `size=${sizeMiB}m,mode=0777`, "tmpfs", dir]);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    const reason = `cannot mount a tmpfs here: ${((err as { stderr?: string }).stderr || String(err)).trim()}`;
    if (process.env.CI && process.getuid?.() === 0) throw new Error(reason);
    return { skip: reason };
  }
  await chmod(dir, 0o777);
  const ballast = path.join(dir, "ballast");
  const free = async (): Promise<number> => {
    const st = await statfs(dir);
    return st.bavail * st.bsize;
  };
  return {
    dir,
    free,
    async fill(leaveFree: number) {
      const size = (await free()) - leaveFree;
      try {
        if (size > 0) await writeFile(ballast, Buffer.alloc(size, 0x5a), { flag: "a" });
      } catch (err) {
        // Someone else filled it meanwhile: full is what was wanted.
        if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
      }
    },
    async release() {
      await rm(ballast, { force: true });
    },
    async unmount() {
      await run("umount", ["-l", dir]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}
