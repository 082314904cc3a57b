package taxi.delta;

import com.amazonaws.auth.DefaultAWSCredentialsProviderChain;
import com.amazonaws.client.builder.AwsClientBuilder.EndpointConfiguration;
import com.amazonaws.services.dynamodbv2.AmazonDynamoDB;
import com.amazonaws.services.dynamodbv2.AmazonDynamoDBClientBuilder;
import com.amazonaws.services.dynamodbv2.model.AttributeDefinition;
import com.amazonaws.services.dynamodbv2.model.AttributeValue;
import com.amazonaws.services.dynamodbv2.model.BillingMode;
import com.amazonaws.services.dynamodbv2.model.ConditionalCheckFailedException;
import com.amazonaws.services.dynamodbv2.model.CreateTableRequest;
import com.amazonaws.services.dynamodbv2.model.GetItemRequest;
import com.amazonaws.services.dynamodbv2.model.KeySchemaElement;
import com.amazonaws.services.dynamodbv2.model.KeyType;
import com.amazonaws.services.dynamodbv2.model.PutItemRequest;
import com.amazonaws.services.dynamodbv2.model.QueryRequest;
import com.amazonaws.services.dynamodbv2.model.ResourceInUseException;
import com.amazonaws.services.dynamodbv2.model.ResourceNotFoundException;
import com.amazonaws.services.dynamodbv2.model.ScalarAttributeType;
import com.amazonaws.services.dynamodbv2.model.TimeToLiveSpecification;
import com.amazonaws.services.dynamodbv2.model.UpdateTimeToLiveRequest;
import io.delta.storage.HadoopFileSystemLogStore;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.InterruptedIOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * A Delta log store for S3 that many drivers can commit through at once.
 *
 * <p>S3 has no put-if-absent, so two drivers writing commit N of one table can both "succeed" and one commit is lost.
 * Here a DynamoDB table decides who owns commit N, with a conditional put. A commit is written in four steps:
 * (1) the actions go to a temporary file under {@code _delta_log/.tmp/}; (2) an entry {@code (table, N.json,
 * temp file, complete=false)} is put on the condition that none exists for N (a loser gets
 * {@code FileAlreadyExistsException}, which Delta answers by retrying at N+1 after checking for logical conflicts);
 * (3) the actions are written to {@code N.json}; (4) the entry is marked complete with an expiry time. A driver that
 * dies between (2) and (4) leaves an incomplete entry: the next reader or writer of the table copies its temporary
 * file into {@code N.json}, so the commit it won is never lost and the log has no gap.
 *
 * <p>The DynamoDB table has the layout of Delta's own {@code S3DynamoDBLogStore} (hash key {@code tablePath}, range key
 * {@code fileName}; {@code tempPath}, {@code complete}, {@code expireTime}), and it takes an endpoint as well as a
 * region, so an S3-compatible deployment (MinIO beside an open-source DynamoDB-compatible server) works too.
 *
 * <p>Hadoop configuration ({@code spark.hadoop.} prefix from Spark): {@code taxi.delta.dynamodb.table},
 * {@code .region}, {@code .endpoint} (empty: AWS's endpoint for the region), {@code .ttl_seconds}. Credentials come
 * from the AWS default provider chain.
 */
public class DynamoDBLogStore extends HadoopFileSystemLogStore {
    public static final String PREFIX = "taxi.delta.dynamodb.";
    private static final Pattern COMMIT_FILE = Pattern.compile("\\d{20}\\.json");
    private static final String TABLE_PATH = "tablePath";
    private static final String FILE_NAME = "fileName";
    private static final String TEMP_PATH = "tempPath";
    private static final String COMPLETE = "complete";
    private static final String EXPIRE_TIME = "expireTime";
    // One client per endpoint, region and table in a JVM (Delta creates log stores often); the table is checked once.
    private static final Map<String, AmazonDynamoDB> CLIENTS = new ConcurrentHashMap<>();

    private final AmazonDynamoDB client;
    private final String table;
    private final long ttlSeconds;

    public DynamoDBLogStore(Configuration conf) throws IOException {
        super(conf);
        table = conf.get(PREFIX + "table", "taxi_delta_log");
        ttlSeconds = conf.getLong(PREFIX + "ttl_seconds", 86400L);
        String region = conf.get(PREFIX + "region", "us-east-1");
        String endpoint = conf.get(PREFIX + "endpoint", "").trim();
        String key = endpoint + "|" + region + "|" + table;
        AmazonDynamoDB existing = CLIENTS.get(key);
        if (existing == null) {
            AmazonDynamoDBClientBuilder builder = AmazonDynamoDBClientBuilder.standard()
                .withCredentials(DefaultAWSCredentialsProviderChain.getInstance());
            if (endpoint.isEmpty()) {
                builder.withRegion(region);
            } else {
                builder.withEndpointConfiguration(new EndpointConfiguration(endpoint, region));
            }
            existing = builder.build();
            ensureTable(existing, table);
            CLIENTS.put(key, existing);
        }
        client = existing;
    }

    @Override
    public void write(Path path, Iterator<String> actions, Boolean overwrite, Configuration conf)
            throws IOException {
        FileSystem fs = path.getFileSystem(conf);
        Path target = fs.makeQualified(path);
        if (overwrite) {
            writeLines(fs, target, collect(actions), true);
            return;
        }
        if (fs.exists(target)) {
            throw new FileAlreadyExistsException(target.toString());
        }
        if (!COMMIT_FILE.matcher(target.getName()).matches()) {
            writeLines(fs, target, collect(actions), false);
            return;
        }
        Path logDir = target.getParent();
        String tableKey = logDir.getParent().toString();
        long version = Long.parseLong(target.getName().substring(0, 20));
        if (version > 0) {
            repair(fs, logDir, tableKey, String.format("%020d.json", version - 1));
        }
        List<String> lines = collect(actions);
        String temp = ".tmp/" + target.getName() + "." + UUID.randomUUID();
        writeLines(fs, new Path(logDir, temp), lines, false);
        claim(tableKey, target.getName(), temp);
        pauseAfterClaim(conf);
        writeLines(fs, target, lines, true);
        complete(tableKey, target.getName(), temp);
    }

    @Override
    public Iterator<FileStatus> listFrom(Path path, Configuration conf) throws IOException {
        FileSystem fs = path.getFileSystem(conf);
        Path logDir = fs.makeQualified(path).getParent();
        if (logDir != null && logDir.getName().equals("_delta_log") && logDir.getParent() != null) {
            Map<String, AttributeValue> latest = latestEntry(logDir.getParent().toString());
            if (latest != null && !"true".equals(latest.get(COMPLETE).getS())) {
                fix(fs, logDir, latest);
            }
        }
        return super.listFrom(path, conf);
    }

    @Override
    public Boolean isPartialWriteVisible(Path path, Configuration conf) {
        return false; // an S3 object appears whole when its upload completes
    }

    /** Fault injection for the tests ({@code pause_after_claim_ms}): a driver killed here has won version N but
     * written no {@code N.json}; the next reader or writer of the table must finish its commit. */
    private static void pauseAfterClaim(Configuration conf) throws IOException {
        long pause = conf.getLong(PREFIX + "pause_after_claim_ms", 0L);
        if (pause > 0) {
            try {
                Thread.sleep(pause);
            } catch (InterruptedException e) {
                throw new InterruptedIOException("paused after claiming a commit");
            }
        }
    }

    // ---- the DynamoDB side ----------------------------------------------------------------------------------------
    private void claim(String tableKey, String fileName, String temp) throws IOException {
        Map<String, AttributeValue> item = entry(tableKey, fileName);
        item.put(TEMP_PATH, new AttributeValue(temp));
        item.put(COMPLETE, new AttributeValue("false"));
        try {
            client.putItem(new PutItemRequest().withTableName(table).withItem(item)
                .withConditionExpression("attribute_not_exists(" + FILE_NAME + ")"));
        } catch (ConditionalCheckFailedException e) {
            throw new FileAlreadyExistsException(tableKey + "/_delta_log/" + fileName);
        }
    }

    private void complete(String tableKey, String fileName, String temp) {
        Map<String, AttributeValue> item = entry(tableKey, fileName);
        item.put(TEMP_PATH, new AttributeValue(temp));
        item.put(COMPLETE, new AttributeValue("true"));
        long expires = System.currentTimeMillis() / 1000 + ttlSeconds;
        item.put(EXPIRE_TIME, new AttributeValue().withN(Long.toString(expires)));
        client.putItem(new PutItemRequest().withTableName(table).withItem(item));
    }

    private void repair(FileSystem fs, Path logDir, String tableKey, String fileName) throws IOException {
        Map<String, AttributeValue> found = client.getItem(new GetItemRequest().withTableName(table)
            .withKey(entry(tableKey, fileName)).withConsistentRead(true)).getItem();
        if (found != null && !found.isEmpty() && !"true".equals(found.get(COMPLETE).getS())) {
            fix(fs, logDir, found);
        }
    }

    /** An entry whose writer stopped before marking it complete: its temporary file becomes the commit. */
    private void fix(FileSystem fs, Path logDir, Map<String, AttributeValue> item) throws IOException {
        String fileName = item.get(FILE_NAME).getS();
        String temp = item.get(TEMP_PATH).getS();
        Path target = new Path(logDir, fileName);
        if (!fs.exists(target)) {
            writeLines(fs, target, readLines(fs, new Path(logDir, temp)), true);
        }
        complete(item.get(TABLE_PATH).getS(), fileName, temp);
    }

    private Map<String, AttributeValue> latestEntry(String tableKey) {
        Map<String, AttributeValue> values = new HashMap<>();
        values.put(":t", new AttributeValue(tableKey));
        List<Map<String, AttributeValue>> items = client.query(new QueryRequest().withTableName(table)
            .withKeyConditionExpression(TABLE_PATH + " = :t").withExpressionAttributeValues(values)
            .withScanIndexForward(false).withLimit(1).withConsistentRead(true)).getItems();
        return items.isEmpty() ? null : items.get(0);
    }

    private static Map<String, AttributeValue> entry(String tableKey, String fileName) {
        Map<String, AttributeValue> item = new HashMap<>();
        item.put(TABLE_PATH, new AttributeValue(tableKey));
        item.put(FILE_NAME, new AttributeValue(fileName));
        return item;
    }

    private static void ensureTable(AmazonDynamoDB client, String table) throws IOException {
        boolean created = false;
        try {
            client.describeTable(table);
        } catch (ResourceNotFoundException missing) {
            try {
                client.createTable(new CreateTableRequest().withTableName(table)
                    .withAttributeDefinitions(
                        new AttributeDefinition(TABLE_PATH, ScalarAttributeType.S),
                        new AttributeDefinition(FILE_NAME, ScalarAttributeType.S))
                    .withKeySchema(
                        new KeySchemaElement(TABLE_PATH, KeyType.HASH),
                        new KeySchemaElement(FILE_NAME, KeyType.RANGE))
                    .withBillingMode(BillingMode.PAY_PER_REQUEST));
                created = true;
            } catch (ResourceInUseException raced) {
                // another driver created it a moment ago
            }
        }
        for (int i = 0; i < 120; i++) {
            if ("ACTIVE".equals(client.describeTable(table).getTable().getTableStatus())) {
                break;
            }
            try {
                Thread.sleep(500);
            } catch (InterruptedException e) {
                throw new InterruptedIOException("waiting for DynamoDB table " + table);
            }
        }
        if (!created) {
            return;
        }
        try { // finished commits' entries expire; an incomplete one stays until it is fixed
            client.updateTimeToLive(new UpdateTimeToLiveRequest().withTableName(table)
                .withTimeToLiveSpecification(
                    new TimeToLiveSpecification().withAttributeName(EXPIRE_TIME).withEnabled(true)));
        } catch (RuntimeException alreadyOrNotAllowed) {
            // the credentials may not change it: entries then stay, which is safe
        }
    }

    // ---- the S3 side ----------------------------------------------------------------------------------------------
    private static List<String> collect(Iterator<String> actions) {
        List<String> lines = new ArrayList<>();
        actions.forEachRemaining(lines::add);
        return lines;
    }

    private static void writeLines(FileSystem fs, Path path, List<String> lines, boolean overwrite)
            throws IOException {
        try (OutputStream out = fs.create(path, overwrite)) {
            for (String line : lines) {
                out.write((line + "\n").getBytes(StandardCharsets.UTF_8));
            }
        }
    }

    private static List<String> readLines(FileSystem fs, Path path) throws IOException {
        List<String> lines = new ArrayList<>();
        try (FSDataInputStream in = fs.open(path);
             BufferedReader reader = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = reader.readLine()) != null) {
                lines.add(line);
            }
        }
        return lines;
    }
}
