// Shared by the peers' bench scripts (bullmq/, graphile/): the machine's
// CPU during a figure, measured as opsrun's bench measures its own.
import { readFileSync } from "node:fs";

// Busy clock ticks of the whole machine since boot (user, nice, system, irq
// and softirq from /proc/stat, as opsrun's bench counts them); the caller
// converts ticks with the machine's rate. null where /proc is missing.
export function busyTicks() {
  try {
    const fields = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    return [0, 1, 2, 5, 6].reduce((sum, i) => sum + (fields[i] ?? 0), 0);
  } catch {
    return null;
  }
}

// Ticks spent since `before` (null when either reading failed).
export function ticksSince(before) {
  const now = busyTicks();
  return before === null || now === null ? null : now - before;
}
