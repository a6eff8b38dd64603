import MemcacheClient
import Testing

@Suite struct ZipfTests {
    private func histogram(n: Int, theta: Double, samples: Int, seed: UInt64 = 42) -> [Int] {
        var zipf = Zipf(n: n, theta: theta, seed: seed)
        var counts = [Int](repeating: 0, count: n)
        for _ in 0..<samples { counts[zipf.next()] += 1 }
        return counts
    }

    @Test func topRanksMatchTheory() {
        let samples = 200_000
        let counts = histogram(n: 1000, theta: 0.99, samples: samples)
        let zipf = Zipf(n: 1000, theta: 0.99)
        // Rank 0 (the "rank-1" key) and rank 1 are exact in Gray's method; σ ≈ 0.6% of the value here.
        for rank in 0...1 {
            let expected = zipf.probability(ofRank: rank)
            let observed = Double(counts[rank]) / Double(samples)
            #expect(abs(observed - expected) / expected < 0.03, "rank \(rank): \(observed) vs \(expected)")
        }
        // Further ranks are approximated, but the shape holds.
        #expect(counts[0] > counts[1] && counts[1] > counts[2] && counts[2] > counts[9] && counts[9] > counts[99])
        let tenth = zipf.probability(ofRank: 9)
        #expect(abs(Double(counts[9]) / Double(samples) - tenth) / tenth < 0.25)
    }

    @Test func sameSeedSameSequence() {
        var a = Zipf(n: 100, seed: 7)
        var b = Zipf(n: 100, seed: 7)
        var c = Zipf(n: 100, seed: 8)
        let sa = (0..<1000).map { _ in a.next() }
        #expect(sa == (0..<1000).map { _ in b.next() })
        #expect(sa != (0..<1000).map { _ in c.next() })
    }

    @Test(arguments: [1, 2, 3, 10, 10_000])
    func ranksStayInRange(n: Int) {
        var zipf = Zipf(n: n, theta: 0.99, seed: 3)
        #expect((0..<20_000).allSatisfy { _ in (0..<n).contains(zipf.next()) })
    }

    @Test func thetaZeroIsUniform() {
        let counts = histogram(n: 10, theta: 0, samples: 100_000)
        #expect(counts.allSatisfy { abs(Double($0) - 10_000) < 500 }, "\(counts)")
    }

    @Test func probabilitiesSumToOne() {
        let zipf = Zipf(n: 500, theta: 0.99)
        let total = (0..<500).reduce(0.0) { $0 + zipf.probability(ofRank: $1) }
        #expect(abs(total - 1) < 1e-9)
    }
}
