SELECT auction, bidder, 0.908 * price, "dateTime", extra FROM bid
