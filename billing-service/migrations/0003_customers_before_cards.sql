-- A payers row is now made for every User Manager's Stripe customer, before any card: when
-- auth-service announces a User Manager, when Support looks one up for the Billing Dept., or
-- with the first PUT /billing/card. The card columns stay NULL until Stripe reports a default
-- card for the customer (webhook) or PUT sets one (msp_billing/cards.py). No change of shape.
COMMENT ON TABLE payers IS 'A User Manager''s Stripe customer (one per user) and a display-only copy of its default card (NULL: no card on file yet).';
COMMENT ON COLUMN payers.payment_method_id IS 'The Stripe customer''s default card (invoice_settings.default_payment_method) as billing last learned it; NULL: no card on file.';
