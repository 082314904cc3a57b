-- Volumes: trips scored per month and service, how many of them have a known duration in the modelled range, and
-- the mean predicted duration. Tile: bars per month.
SELECT service, month, count(*) AS trips, sum(CAST(in_training_range AS INT)) AS known_trips,
       round(avg(predicted_duration_min), 4) AS mean_predicted_min
FROM taxi.predictions
GROUP BY service, month
ORDER BY service, month
