-- flowtrack schema, version 3: a campaign's events in sequence order.
-- SubscribeEvents and StreamMessageHistory for one campaign read this index
-- instead of filtering the business's whole log (events_by_seq) on every
-- page: the cost of a page is its rows, not the business's other campaigns.
-- A campaign belongs to one business, so its sequence order is the
-- business's.

CREATE INDEX events_by_campaign ON events (cid, seq);
