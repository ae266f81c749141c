DROP INDEX order_events_kind_id_idx;
DROP INDEX webhook_deliveries_event_id_idx;
DROP INDEX orders_paid_at_idx;
