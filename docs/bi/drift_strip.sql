-- Drift strip: per week and judged feature, the value of its rule (PSI or JS distance) against its threshold.
-- Tile: a strip of cells per feature over weeks, coloured by `drifted`.
SELECT service, week, feature, metric, value, threshold, drifted, model_version, verdict
FROM taxi.drift
WHERE judged
ORDER BY service, feature, week
