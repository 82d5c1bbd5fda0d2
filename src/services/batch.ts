// Groups the calls made in one event-loop tick into one database round trip. Each caller awaits
// its own result, which is only given once the whole group's statement has completed (committed,
// for writes): grouping changes the number of round trips, never what a caller is told.
export type Batched<I, O> = (item: I) => Promise<O>;

export function batched<I, O>(run: (items: I[]) => Promise<O[]>, opts: { maxBatch?: number } = {}): Batched<I, O> {
  const maxBatch = opts.maxBatch ?? 256;
  let queue: { item: I; resolve: (o: O) => void; reject: (e: unknown) => void }[] = [];
  let scheduled = false;

  const flush = () => {
    scheduled = false;
    while (queue.length > 0) {
      const group = queue.splice(0, maxBatch);
      run(group.map((g) => g.item)).then(
        (results) => group.forEach((g, i) => g.resolve(results[i]!)),
        (err) => group.forEach((g) => g.reject(err)),
      );
    }
  };

  return (item) =>
    new Promise<O>((resolve, reject) => {
      queue.push({ item, resolve, reject });
      if (queue.length >= maxBatch) flush();
      else if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}
