-- Issue 29: the periodic and stream queries whose cost grew with the data, not the load.

-- The subscribe-message repair scan (subscribe.rs `repair`): orders paid in the last day,
-- newest first. Only paid orders have a paid_at; a range on it implies NOT NULL.
CREATE INDEX orders_paid_at_idx ON orders (paid_at) WHERE paid_at IS NOT NULL;

-- The events prune (events.rs `prune`): deliveries of the pruned events, by event id
-- (the UNIQUE (endpoint, event_id) index cannot be searched by event_id alone).
CREATE INDEX webhook_deliveries_event_id_idx ON webhook_deliveries (event_id);

-- WatchOrderEvents with a `kinds` filter (events.rs `after`): the next events of the wanted
-- kinds after the cursor, without walking every event of the other kinds.
CREATE INDEX order_events_kind_id_idx ON order_events (kind, id);
