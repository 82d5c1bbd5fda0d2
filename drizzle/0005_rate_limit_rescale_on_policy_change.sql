ALTER TABLE "rate_limit_buckets" ADD COLUMN "t_ms" double precision;
