// Drives @segment/analytics-node and @rudderstack/rudder-sdk-node, unchanged, against an
// ingest: only the host and the write key are set. Prints what went wrong as JSON, exits 1 then.
import { Analytics } from "@segment/analytics-node";
import RudderAnalytics from "@rudderstack/rudder-sdk-node";

const host = process.env.INGEST_URL;
const writeKey = process.env.WRITE_KEY;
const segmentUser = process.env.SEGMENT_USER;
const rudderUser = process.env.RUDDER_USER;
const errors = [];

function calls(userId) {
  const anonymousId = "anon-" + userId;
  return [
    ["identify", { userId, anonymousId, traits: { email: `${userId}@example.com`, plan: "pro" } }],
    ["track", {
      userId, anonymousId, event: "Order Completed",
      properties: { order_id: "o-" + userId, total: 27.5, currency: "EUR", products: [{ sku: "s", price: 27.5, quantity: 1 }] },
    }],
    ["page", { userId, anonymousId, category: "Docs", name: "Home", properties: { path: "/" } }],
    ["screen", { userId, anonymousId, name: "Settings" }],
    ["group", { userId, anonymousId, groupId: "acme", traits: { name: "ACME" } }],
    ["alias", { userId, previousId: anonymousId }],
  ];
}

const segment = new Analytics({ writeKey, host, flushAt: 3, maxRetries: 2 });
segment.on("error", (error) => errors.push({ client: "analytics-node", error: String(error?.reason ?? error) }));
for (const [method, params] of calls(segmentUser)) segment[method](params);
await segment.closeAndFlush({ timeout: 20000 });

const rudder = new RudderAnalytics(writeKey, {
  dataPlaneUrl: host, retryCount: 2, logLevel: "error",
  errorHandler: (error) => errors.push({ client: "rudder-sdk-node", error: String(error) }),
});
// Each call's callback runs once the batch holding it was answered.
const delivered = calls(rudderUser).map(([method, params]) => new Promise((resolve) => {
  rudder[method](params, (error) => {
    if (error) errors.push({ client: "rudder-sdk-node", call: method, error: String(error) });
    resolve();
  });
}));
rudder.flush();
await Promise.all(delivered);

process.stdout.write(JSON.stringify({ errors }) + "\n");
process.exit(errors.length ? 1 : 0);
