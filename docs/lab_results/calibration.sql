-- Recalibrate KETTER_ZIP_THRESHOLD_FILES / KETTER_ZIP_THRESHOLD_AVG_SIZE_BYTES from real jobs.
-- Every job records a `plan` event (strategy, n_files, total_bytes, avg_size_bytes, reason) and a
-- `done` event (duration_s, phase_timings). Jobs are bucketed by file count and average size
-- (powers of 2), per target portal (each portal is one link); where both strategies ran in one bucket, the faster median MB/s wins it, and the
-- thresholds should put that bucket on the winner's side.
-- Since issue 19 the `done` event also says the path: `rtt_ms` (measured for big jobs over
-- ssh; null: not measured, a small or local job), `connections` and `send_rate_bytes_per_s`;
-- jobs are bucketed by path too (lan < 5 ms <= metro < 40 ms <= wan), so a WAN portal's jobs
-- calibrate apart from the LAN's.
--   psql "$DATABASE" -f docs/lab_results/calibration.sql
WITH done_jobs AS (
  SELECT j.id, j.target_portal_id, j.strategy, j.requested_strategy, j.n_files, j.total_bytes,
         (p.payload->>'avg_size_bytes')::bigint AS avg_size_bytes,
         (d.payload->>'duration_s')::float AS duration_s,
         d.payload->'phase_timings' AS phases,
         (d.payload->>'rtt_ms')::float AS rtt_ms,
         (d.payload->>'connections')::int AS connections,
         (d.payload->>'send_rate_bytes_per_s')::float AS send_rate
  FROM jobs j
  JOIN LATERAL (SELECT payload FROM job_events e
                WHERE e.job_id = j.id AND e.event_type = 'plan' ORDER BY e.id DESC LIMIT 1) p ON true
  JOIN LATERAL (SELECT payload FROM job_events e
                WHERE e.job_id = j.id AND e.event_type = 'done' ORDER BY e.id DESC LIMIT 1) d ON true
  WHERE j.status = 'DONE' AND j.n_files > 0 AND (d.payload->>'duration_s')::float > 0
)
SELECT target_portal_id                                                         AS portal,
       CASE WHEN rtt_ms IS NULL THEN 'unmeasured' WHEN rtt_ms < 5 THEN 'lan'
            WHEN rtt_ms < 40 THEN 'metro' ELSE 'wan' END                        AS path,
       power(2, floor(log(2, n_files::numeric)))::bigint                        AS files_from,
       power(2, floor(log(2, greatest(avg_size_bytes, 1)::numeric)))::bigint  AS avg_bytes_from,
       strategy,
       count(*)                                                                AS jobs,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY total_bytes / duration_s / 1e6)::numeric, 1)
                                                                               AS median_mb_s,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_s)::numeric, 2) AS median_s,
       round(avg((phases->>'zip')::float)::numeric, 2)                         AS avg_zip_s,
       round(avg((phases->>'send')::float)::numeric, 2)                        AS avg_send_s,
       round(avg((phases->>'unzip')::float)::numeric, 2)                       AS avg_unzip_s,
       round(avg((phases->>'verify')::float)::numeric, 2)                      AS avg_verify_s,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY rtt_ms)::numeric, 1)  AS median_rtt_ms,
       round(avg(connections)::numeric, 1)                                     AS avg_connections,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY send_rate / 1e6)::numeric, 1)
                                                                               AS median_send_mb_s
FROM done_jobs
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5;
