-- Carts by owner: a customer or a guest token, whichever the cart has (exactly one
-- is set). The account caps count an owner's open and checked-out carts, and the
-- units of a SKU in them, on every cart command; without this index those counts
-- scan every cart.

-- secondary indexes
CREATE INDEX carts_owner_status_idx ON carts ((coalesce(customer_id, guest_token)), status);
