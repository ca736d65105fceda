// Reads sluice archive objects the way Trino and Athena read zstd text
// files: through aircompressor, the pure-Java zstd that Trino's Hive
// connector uses (ZstdHadoopStreams, as its CompressionKind.ZSTD does).
// Prints each object's NDJSON lines to standard output.
//
//   java -cp aircompressor.jar ReadArchive.java OBJECT...

import io.airlift.compress.zstd.ZstdHadoopStreams;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;

public class ReadArchive {
    public static void main(String[] paths) throws Exception {
        var streams = new ZstdHadoopStreams();
        for (String path : paths) {
            try (InputStream object = Files.newInputStream(Path.of(path));
                 InputStream lines = streams.createInputStream(object)) {
                lines.transferTo(System.out);
            }
        }
        System.out.flush();
    }
}
