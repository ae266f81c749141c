DROP TABLE event_relays;
