#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64: a small, fast, seedable generator, so that load and its key sequence repeat exactly.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func nextUnitDouble() -> Double {
        Double(next() >> 11) * 0x1p-53
    }
}

/// Zipf-distributed ranks in `0..<n`, rank 0 the most popular: P(rank k) ∝ 1 / (k+1)^θ.
///
/// Gray et al., "Quickly Generating Billion-Record Synthetic Databases" (SIGMOD '94), as YCSB's
/// ZipfianGenerator does it: O(n) set-up to compute ζ(n, θ), then O(1) per draw.
public struct Zipf: Sendable {
    /// The number of ranks.
    public let n: Int
    /// The skew, in [0, 1). YCSB's default is 0.99.
    public let theta: Double
    /// ζ(n, θ) = Σ 1/i^θ for i in 1...n.
    public let zetaN: Double

    private let alpha: Double
    private let eta: Double
    private let halfPowTheta: Double
    private var rng: SplitMix64

    /// - Precondition: `n >= 1` and `0 <= theta < 1` (the method divides by 1 - θ).
    public init(n: Int, theta: Double = 0.99, seed: UInt64 = 1) {
        precondition(n >= 1, "Zipf needs at least one rank")
        precondition(theta >= 0 && theta < 1, "Gray's method needs 0 <= θ < 1")
        self.n = n
        self.theta = theta
        zetaN = Self.zeta(n, theta)
        alpha = 1 / (1 - theta)
        let zeta2 = Self.zeta(min(n, 2), theta)
        eta = n > 1 ? (1 - pow(2 / Double(n), 1 - theta)) / (1 - zeta2 / zetaN) : 0
        halfPowTheta = pow(0.5, theta)
        rng = SplitMix64(seed: seed)
    }

    /// The next rank.
    public mutating func next() -> Int {
        let u = rng.nextUnitDouble()
        let uz = u * zetaN
        if uz < 1 { return 0 }
        if n > 1 && uz < 1 + halfPowTheta { return 1 }
        return min(n - 1, Int(Double(n) * pow(eta * u - eta + 1, alpha)))
    }

    /// The exact probability of `rank`, for checking a sample against.
    public func probability(ofRank rank: Int) -> Double {
        1 / pow(Double(rank + 1), theta) / zetaN
    }

    private static func zeta(_ n: Int, _ theta: Double) -> Double {
        (1...n).reduce(0) { $0 + 1 / pow(Double($1), theta) }
    }
}
