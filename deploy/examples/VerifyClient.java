import com.google.protobuf.ByteString;
import com.google.protobuf.util.JsonFormat;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import ppfr.v1.DataType;
import ppfr.v1.ProtectedFace;
import ppfr.v1.VerifyRequest;
import ppfr.v1.VerifyResponse;

/** Verify over HTTP/JSON with the classes protoc made from protos/: URL SUBJECT FACE.npy FRONTEND_ID. */
public class VerifyClient {
  public static void main(String[] args) throws Exception {
    byte[] npy = Files.readAllBytes(Path.of(args[2]));
    int bytes = 34 * 14 * 14 * 2; // the float16 tensor is the .npy file's tail
    ProtectedFace face = ProtectedFace.newBuilder()
        .setData(ByteString.copyFrom(npy, npy.length - bytes, bytes))
        .addAllShape(List.of(1L, 34L, 14L, 14L))
        .setDataType(DataType.DATA_TYPE_FLOAT16)
        .setFrontendId(args[3])
        .build();
    VerifyRequest request = VerifyRequest.newBuilder().setSubjectId(args[1]).setFace(face).build();
    HttpRequest post = HttpRequest.newBuilder(URI.create(args[0] + "/ppfr.v1.FaceVerification/Verify"))
        .header("x-api-key", System.getenv("PPFR_API_KEY"))
        .header("Content-Type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(JsonFormat.printer().print(request)))
        .build();
    HttpResponse<String> reply = HttpClient.newHttpClient().send(post, HttpResponse.BodyHandlers.ofString());
    if (reply.statusCode() != 200) {
      System.err.println("HTTP " + reply.statusCode() + ": " + reply.body());
      System.exit(1);
    }
    VerifyResponse.Builder answer = VerifyResponse.newBuilder();
    JsonFormat.parser().merge(reply.body(), answer);
    System.out.println(args[1] + " " + Path.of(args[2]).getFileName() + ": match=" + answer.getMatch()
        + " threshold=" + answer.getThreshold());
  }
}
