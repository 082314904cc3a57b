"""Reference baselines logged next to the learners on the same split: they say what the boosters add."""

from __future__ import annotations

from jobs.models.inputs import PREDICTION, TARGET


def zone_pair_median(train, valid):
    """Predict the training median duration of the zone pair (global median for unseen pairs)."""
    from pyspark.sql import functions as F

    pair = train.groupBy("PULocationID", "DOLocationID").agg(F.median(TARGET).alias("pair_median"))
    overall = train.agg(F.median(TARGET)).first()[0]
    return valid.join(F.broadcast(pair), ["PULocationID", "DOLocationID"], "left").withColumn(
        PREDICTION, F.coalesce("pair_median", F.lit(overall))
    )


def linear_zone_pair_distance(train, valid):
    """Spark ML linear regression on the one-hot zone pair + trip distance (the classic course baseline)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import functions as F

    def prep(df):
        return df.withColumn("pu_do", F.concat_ws("_", "PULocationID", "DOLocationID")).withColumn(
            "distance", F.coalesce(F.col("trip_distance"), F.lit(0.0))
        )

    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCol="pu_do", outputCol="pu_do_idx", handleInvalid="keep"),
            OneHotEncoder(inputCols=["pu_do_idx"], outputCols=["pu_do_vec"], handleInvalid="keep"),
            VectorAssembler(inputCols=["pu_do_vec", "distance"], outputCol="lin_features"),
            LinearRegression(featuresCol="lin_features", labelCol=TARGET, predictionCol=PREDICTION, regParam=0.01),
        ]
    )
    model = pipeline.fit(prep(train))
    return model.transform(prep(valid)).withColumn(PREDICTION, F.greatest(F.col(PREDICTION), F.lit(0.0)))
