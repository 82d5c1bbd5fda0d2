// Group commit for the hot path. Calls made while a group's statement is on its way are gathered
// and go out together as the next statement, as soon as one of the `maxInFlight` slots is free:
// at low load every call goes out at once (alone, after the current tick), under load the groups
// grow with the load instead of the statements multiplying. Each caller awaits its own result,
// which is given only once the whole group's statement has completed (committed, for writes):
// grouping changes the number of round trips, never what a caller is told.
export type Batched<I, O> = (item: I) => Promise<O>;

export type BatchOptions = {
  /** the largest group (and statement) */
  maxBatch?: number;
  /** statements of this kind under way at once */
  maxInFlight?: number;
  /** told each group's size and how long its statement took, once it has (for /metrics) */
  observe?: (size: number, seconds: number) => void;
};

type Waiting<I, O> = { item: I; resolve: (o: O) => void; reject: (e: unknown) => void };

export function batched<I, O>(run: (items: I[]) => Promise<O[]>, opts: BatchOptions = {}): Batched<I, O> {
  const maxBatch = opts.maxBatch ?? 256;
  const maxInFlight = opts.maxInFlight ?? 2;
  let queue: Waiting<I, O>[] = [];
  let inFlight = 0;
  let scheduled = false;

  const observe = opts.observe;
  const send = (group: Waiting<I, O>[]) => {
    inFlight++;
    const started = observe ? performance.now() : 0;
    let p: Promise<O[]>;
    try {
      p = run(group.map((g) => g.item));
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (results) => group.forEach((g, i) => g.resolve(results[i]!)),
      (err) => group.forEach((g) => g.reject(err)),
    ).finally(() => {
      inFlight--;
      try {
        observe?.(group.length, (performance.now() - started) / 1000);
      } catch {
        // a metric's fault must not hold every later group of this kind behind a slot never freed
      }
      flush();
    });
  };

  const flush = () => {
    scheduled = false;
    while (queue.length > 0 && inFlight < maxInFlight) {
      const group = queue.length <= maxBatch ? queue : queue.splice(0, maxBatch);
      if (group === queue) queue = [];
      send(group);
    }
  };

  return (item) =>
    new Promise<O>((resolve, reject) => {
      queue.push({ item, resolve, reject });
      // The rest of this tick's calls join the group; a full group goes at once if a slot is free.
      if (queue.length >= maxBatch && inFlight < maxInFlight) flush();
      else if (!scheduled && inFlight < maxInFlight) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}
