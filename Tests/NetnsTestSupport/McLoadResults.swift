/// What `mc-load … --json` prints on its last line (keys in snake_case), for
/// `ProcessResult.json(_:)`.
enum McLoad {
    struct Populate: Decodable {
        var stored: Int
        var failed: Int
        var verified: Int?
        var verifyErrors: Int?
    }

    struct Load: Decodable {
        var requests: Int
        var replies: Int
        var hits: Int
        var misses: Int
        var timeouts: Int
        var validationErrors: Int
        var errors: Int
        var datagrams: Int
    }

    struct StaleCheck: Decodable {
        var reads: Int
        var hits: Int
        var writes: Int
        var stale: Int
        var corrupt: Int
    }

    struct Mixed: Decodable {
        var reads: Int
        var multigets: Int
        var hits: Int
        var misses: Int
        var timeouts: Int
        var sets: Int
        var ttlSets: Int
        var deletes: Int
        var touches: Int
        var incrs: Int
        var flushes: Int
        var writeErrors: Int
        var stale: Int
        var expired: Int
        var corrupt: Int
        var examples: [String]
    }

    struct Get: Decodable {
        struct Item: Decodable {
            var key: String
            var bytes: Int
            var value: String?
        }
        var hits: [Item]
        var misses: [String]
        var datagrams: Int?
    }
}
